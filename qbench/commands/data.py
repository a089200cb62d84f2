"""``qbench data``: build (or load from the cache) a dataset's log-mel features and summarise it."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build a dataset's log-mel features (synthetic keywords/events or your recordings) and summarise it"

SYNTHETIC = ("keywords", "events")
FORMATS = ("esc50", "fsd50k", "speechcommands", "csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=SYNTHETIC + FORMATS, default=None,
                        help="dataset kind (default: keywords, or the --data folder's layout)")
    parser.add_argument("--data", metavar="PATH",
                        help="folder of recordings (ESC-50, FSD50K, Speech Commands, labels.csv)")
    parser.add_argument("--dataset-format", choices=FORMATS, help="layout of --data (default: detected)")
    parser.add_argument("--seconds", type=float, default=None, help="clip length in seconds (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips-per-class", type=int, default=None, help="synthetic sets only (default 250)")
    parser.add_argument("--snr", type=float, nargs=2, metavar=("LOW", "HIGH"), help="SNR range in dB (default 0 20)")
    parser.add_argument("--n-mels", type=int, default=None, help="mel bands (default 40)")
    parser.add_argument("--sample-rate", type=int, default=None, help="feature sample rate in Hz (default 16000)")
    parser.add_argument("--cache", metavar="DIR", help="cache folder (default $QBENCH_CACHE or ~/.cache/qbench)")
    parser.add_argument("--out", metavar="DIR", help="write summary.json, config.json and features.npz here")
    parser.add_argument("--jobs", type=int, help="processes that compute a synthetic dataset, in parts of at least "
                        "1,000 clips (default: $QBENCH_JOBS, else the usable cores); the same arrays as one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    """The DataConfig the options describe (raises QbenchError on a bad combination)."""
    from qbench.data import DataConfig, DatasetKind, FeatureConfig
    from qbench.data.loaders import detect_format
    from qbench.errors import QbenchError

    kind = args.dataset_format or args.dataset
    if args.data is None:
        if kind not in (None, *SYNTHETIC):
            raise QbenchError(f"--dataset {kind} reads recordings: pass their folder with --data PATH")
        kind = kind or "keywords"
    else:
        if kind in SYNTHETIC:
            raise QbenchError(f"--dataset {kind} is synthetic and takes no --data")
        if args.dataset_format and args.dataset and args.dataset != args.dataset_format:
            raise QbenchError(f"--dataset {args.dataset} and --dataset-format {args.dataset_format} disagree")
        path = Path(args.data).expanduser()
        if not path.exists():
            raise QbenchError(f"dataset folder {path} does not exist")
        kind = kind or detect_format(path).value
    features = {k: v for k, v in (("n_mels", args.n_mels), ("sample_rate", args.sample_rate)) if v is not None}
    options = {k: v for k, v in (("clip_seconds", args.seconds), ("clips_per_class", args.clips_per_class),
                                 ("snr_db", tuple(args.snr) if args.snr else None)) if v is not None}
    return DataConfig(kind=DatasetKind(kind), path=args.data, seed=args.seed, features=FeatureConfig(**features),
                      **options)


def format_summary(summary: dict) -> str:
    """Human-readable lines of :meth:`FeatureDataset.summary`."""
    lines = [
        f"classes ({len(summary['classes'])}, {'multi' if summary['multilabel'] else 'single'}-label): "
        + ", ".join(summary["classes"]),
        "clips:   " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
        + f"  ({summary['clip_seconds']:g} s each, {sum(summary['hours'].values()):.2f} h in all)",
        f"features: (T, F) = ({summary['feature_shape'][0]}, {summary['feature_shape'][1]}) float32 log-mel per clip",
        f"time:    {summary['build_seconds']:.1f} s" + (" (loaded from cache)" if summary["from_cache"] else ""),
        f"skipped: {summary['skipped']} clip(s)",
    ]
    lines += [f"  {clip['path']}: {clip['reason']}" for clip in summary["skipped_clips"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from qbench.commands.sweep import resolve_jobs
    from qbench.data import build_dataset
    from qbench.data.dataset import save_npz
    from qbench.errors import QbenchError

    cfg = config_from_args(args)
    jobs = resolve_jobs(args)
    out = _out_dir(args.out) if args.out else None  # before the build: fail fast, not after minutes
    dataset = build_dataset(cfg, cache_dir=args.cache, progress=not args.no_progress, jobs=jobs)
    summary = dataset.summary()
    print(format_summary(summary))
    if out is not None:
        try:
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            (out / "config.json").write_text(cfg.to_json() + "\n")
            save_npz(out / "features.npz", dataset)
        except OSError as exc:
            raise QbenchError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
        print(f"wrote {out / 'summary.json'}, {out / 'config.json'}, {out / 'features.npz'}")
    return 0


def _out_dir(path: str) -> Path:
    from qbench.errors import QbenchError

    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QbenchError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    return out
