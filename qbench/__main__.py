"""``python -m qbench`` and the ``qbench`` script: qbench's process policy (threads, malloc), then the CLI."""

from qbench.provenance import apply_process_policy


def main() -> int:
    apply_process_policy()  # before torch is first imported: OpenMP reads OMP_WAIT_POLICY once, at load
    from qbench.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
