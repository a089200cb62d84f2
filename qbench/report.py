"""Tables and plots rendered from stored records only, so they can always be rebuilt.

A record (one sweep point, see :mod:`qbench.sweep`) has at least ``id``, ``status``,
``model``, ``precision`` (``fp32`` or a tag such as ``w4a8``), ``weight_bits``, ``method``
(``fp32``/``ptq``/``qat``), ``distill``, ``backend``; ok records add ``metrics.error``,
``packed_bytes``, ``file_bytes``, ``pct_fp32``, ``pct_teacher``, ``agreement`` and
``latency.<b{batch}_t{threads}>.median_ms``/``iqr_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qbench.backends import REFERENCE, get
from qbench.errors import QbenchError
from qbench.records import STATUS_OK, ResultsDocument, atomic_write_text, records_frame

TABLE_NAME = "results.md"
CSV_NAME = "results.csv"
PLOT_SIZE = "pareto_size.png"
PLOT_LATENCY = "pareto_latency.png"


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
    if value is None:
        return "failed"
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return format(value * scale if scale != 1.0 else value, fmt)


def _latency(rec: dict[str, Any], key: str) -> str:
    lat = (rec.get("latency") or {}).get(key)
    if not lat:
        return "–"
    noisy = NOISY_MARK if lat.get("noisy") else ""  # older records have no "noisy": shown as clean
    return f"{_num(lat.get('median_ms'), '.3g')} ± {_num(lat.get('iqr_ms'), '.2g')}{noisy}"


NOISY_MARK = "~"  # after a latency measured under load or with a wide spread (qbench.measure)
FAILED_CELL_CHARS = 80  # a failed point's reason in a table cell; the record keeps all of it


def _failed_cell(r: dict[str, Any]) -> str:
    """``failed: <reason>`` for a table cell: the reason's first line, cut at a word with a pointer
    to the record that holds it whole, ``|`` escaped so the row stays one row."""
    lines = str(r.get("error") or "").splitlines() or [""]
    text = f"failed: {lines[0]}"
    if len(text) > FAILED_CELL_CHARS or len(lines) > 1:
        cut = text[:FAILED_CELL_CHARS].rsplit(" ", 1)[0] if len(text) > FAILED_CELL_CHARS else text
        text = f"{cut} … (whole reason in record `{r.get('id', '?')}`)"
    return text.replace("|", "\\|")


def latency_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The ``b{batch}_t{threads}`` latency settings present, batch then threads ascending."""
    keys = {k for r in records for k in (r.get("latency") or {})}

    def order(k: str) -> tuple[int, int]:
        batch, threads = k[1:].split("_t")
        return int(batch), int(threads)

    return sorted(keys, key=order)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _interval(ci: Any, fmt: str = ".1f") -> str:
    """``[lo, hi]`` in percent, or empty for a record without an interval (older records)."""
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return ""
    return f" [{format(100 * ci[0], fmt)}, {format(100 * ci[1], fmt)}]"


def error_cell(r: dict[str, Any], fmt: str = ".1f") -> str:
    """Test error % with its 95 % interval: ``23.4 [21.9, 25.0]``."""
    metrics = r.get("metrics") or {}
    return _num(metrics.get("error", float("nan")), fmt, 100) + _interval(metrics.get("ci95"), fmt)


def delta_cell(r: dict[str, Any], field: str = "delta_error_vs_fp32", ci_field: str = "delta_ci95") -> str:
    """A paired change in points with its interval; ``(no difference)`` when the interval holds 0."""
    from qbench.stats import excludes_zero

    value, ci = r.get(field), r.get(ci_field)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = _num(value, "+.1f", 100) + _interval(ci, "+.1f")
    return text + ("" if not ci or excludes_zero(ci) else " (no difference)")


def multilabel(records: Sequence[dict[str, Any]]) -> bool:
    """Whether the records score a multi-label task, where "error" is 1 - mAP."""
    return any("map" in (r.get("metrics") or {}) for r in records)


def error_name(records: Sequence[dict[str, Any]]) -> str:
    """What "error" means in these records' tables and plots."""
    return "1 − mAP" if multilabel(records) else "error"


def accuracy_table(records: Sequence[dict[str, Any]]) -> str:
    """Error and size per model, precision, method and distillation (PyTorch backend); mAP and EER
    beside 1 - mAP for a multi-label task."""
    events = multilabel(records)
    rows = []
    for r in records:
        if r.get("backend") != REFERENCE:
            continue
        metrics = r.get("metrics") or {}
        train = ((r.get("train") or {}).get("train_split") or {}).get("error")
        clip = r.get("input_range") or {}
        rows.append([
            r.get("model", "?") + ("" if r.get("seed") is None else f" (seed {r['seed']})"),
            r.get("precision", "?"), r.get("method", "?"), r.get("distill", "?"),
            r["status"] if r["status"] == STATUS_OK else _failed_cell(r),
            _num(r.get("params", float("nan")), ","),
            error_cell(r), _num(metrics.get("n", float("nan")), "d") if "n" in metrics else "–",
            *([_num(metrics.get("map", float("nan")), ".1f", 100), _num(metrics.get("eer", float("nan")), ".1f", 100)]
              if events else []),
            "–" if train is None else _num(train, ".1f", 100),
            delta_cell(r) if r.get("method") != "fp32" else delta_cell(r, "delta_error_vs_no_kd", "delta_ci95_vs_no_kd"),
            "–" if not clip else f"{100 * clip['clipped_input']:.2f} / {100 * clip['clipped_hidden']:.2f}",
            _num(r.get("packed_bytes", float("nan")), ".1f", 1 / 1024),
            _num(r.get("pct_fp32", float("nan")), ".1f"),
            _num(r.get("pct_teacher", float("nan")), ".2f"),
        ])
    err = error_name(records)
    header = ["model", "precision", "method", "distill", "status", "params", f"test {err} % [95 % CI]", "clips",
              *(["mAP %", "EER %"] if events else []), f"train {err} %",
              f"Δ {err}, pts [paired 95 % CI] (quantized: vs fp32; fp32: vs no KD)",
              "LSTM io clipped % (input / hidden)", "packed KiB", "% of fp32 student", "% of teacher"]
    return _md_table(header, rows)


def seeds_table(records: Sequence[dict[str, Any]]) -> str:
    """fp32 students over training seeds: test error mean ± sd, and the KD change per seed."""
    from qbench.stats import mean_and_spread

    fp32 = [r for r in records if r.get("method") == "fp32" and r.get("role") == "student"
            and r.get("backend") == REFERENCE and r["status"] == STATUS_OK]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in fp32:
        groups.setdefault((r["model"], r.get("distill", "none")), []).append(r)
    if all(len(g) < 2 for g in groups.values()):
        return ""
    rows = []
    for (model, distill), group in groups.items():
        err = mean_and_spread([(g.get("metrics") or {}).get("error") for g in group])
        delta = mean_and_spread([g.get("delta_error_vs_no_kd") for g in group])
        beyond = sum(1 for g in group if g.get("delta_ci95_vs_no_kd") and _excludes(g["delta_ci95_vs_no_kd"]))
        rows.append([model, distill, str(err["n"]), f"{100 * err['mean']:.1f} ± {100 * err['std']:.1f}",
                     f"{100 * err['min']:.1f}-{100 * err['max']:.1f}",
                     "–" if not delta["n"] else f"{100 * delta['mean']:+.1f} ± {100 * delta['std']:.1f} "
                                                f"({beyond} of {delta['n']} seeds beyond their interval)"])
    header = ["model", "distill", "seeds", f"test {error_name(records)} % mean ± sd", "range",
              "Δ vs no KD, pts mean ± sd"]
    return _md_table(header, rows)


def _excludes(ci: Sequence[float]) -> bool:
    from qbench.stats import excludes_zero

    return excludes_zero(tuple(ci))


METHOD_ORDER = ("fp32", "ptq", "qat")
DISTILL_ORDER = ("none", "kd", "tkd", "kd+tkd")


def _column_order(column: tuple[str, str]) -> tuple[int, int, str]:
    method, distill = column
    rank = lambda seq, v: seq.index(v) if v in seq else len(seq)  # noqa: E731
    return rank(METHOD_ORDER, method), rank(DISTILL_ORDER, distill), str(distill)


def summary_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per model and precision; test error % per method/distillation (PyTorch backend).

    Columns appear for the (method, distillation) pairs the records hold, e.g. ``fp32 none``,
    ``fp32 kd``, ``ptq kd``, ``qat none``, ``qat kd``; failed points show ``failed``.
    """
    torch_records = [r for r in records if r.get("backend") == REFERENCE and r.get("seed") is None]
    columns = sorted({(r.get("method"), r.get("distill")) for r in torch_records}, key=_column_order)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in torch_records:
        row = rows.setdefault((r.get("model"), r.get("precision")), {"ref": r})
        row[(r.get("method"), r.get("distill"))] = r
        if r["status"] == STATUS_OK:
            row["ref"] = r
    body = []
    for (model, precision), row in rows.items():
        ref = row["ref"]
        cells = []
        for col in columns:
            r = row.get(col)
            cells.append("–" if r is None else (error_cell(r) if r["status"] == STATUS_OK else "failed"))
        body.append([model, precision, *cells, _num(ref.get("packed_bytes", float("nan")), ".1f", 1 / 1024),
                     _num(ref.get("pct_fp32", float("nan")), ".1f"), _num(ref.get("pct_teacher", float("nan")), ".2f")])
    err = error_name(records)
    header = ["model", "precision", *[f"{m} {d} {err} %" for m, d in columns], "size KiB", "% of fp32 student",
              "% of teacher"]
    return _md_table(header, body)


def _top1(agreement: dict[str, Any]) -> str:
    """Top-1 agreement; for the integer engine, with the clips whose top logits tie exactly."""
    text = _num(agreement.get("top1", float("nan")), ".2f", 100)
    ties = agreement.get("class_ties")
    if ties:
        up_to = _num(agreement.get("class_agreement_up_to_ties", float("nan")), ".2f", 100)
        text += f" ({up_to} counting {ties:.0f} exact ties)"
    return text


SPEEDUP_KEY = "b1_t1"  # the latency setting a speed-up against fp32 is computed at


def _median(r: dict[str, Any] | None, field: str, key: str = SPEEDUP_KEY) -> float | None:
    lat = ((r or {}).get(field) or {}).get(key) or {}
    value = lat.get("median_ms")
    return value if value and not math.isnan(value) else None


def fp32_baselines(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(model, distill, backend) -> the fp32 student's record on that backend (the sweep's own seed)."""
    return {(r["model"], r.get("distill", "none"), r.get("backend")): r for r in records
            if r.get("method") == "fp32" and r.get("role") == "student" and r.get("seed") is None
            and r["status"] == STATUS_OK}


def _speedup(r: dict[str, Any], baselines: dict, latency_field: str) -> str:
    """``x.xx×`` faster than the fp32 student on the same runtime (PyTorch for the engine), batch 1, 1 thread."""
    if r.get("method") == "fp32":
        return "baseline" if r.get("role") == "student" else "–"
    key = (r.get("model"), r.get("distill", "none"))
    base = baselines.get((*key, r.get("backend")))
    fallback = base is None  # a backend with no fp32 form of its own (the engine): against PyTorch's
    base = baselines.get((*key, REFERENCE)) if fallback else base
    mine, theirs = _median(r, latency_field), _median(base, latency_field)
    if mine is None or theirs is None:
        return "–"
    return f"{theirs / mine:.3g}×" + (f" (vs {_label(REFERENCE)} fp32)" if fallback else "")


def _label(backend: str) -> str:
    """A backend's report label; the raw name for one this install does not register."""
    try:
        return get(backend).label
    except QbenchError:
        return backend


def _deployment_row(r: dict[str, Any], keys: list[str], *, backend: str, latency_field: str,
                    baselines: dict | None = None) -> list[str]:
    agreement = r.get("agreement") or {}
    status = r["status"] if r["status"] == STATUS_OK else _failed_cell(r)
    return [
        r.get("model", "?"), r.get("precision", "?"), r.get("distill", "?"), backend, status,
        _num(r.get("file_bytes", float("nan")), ".1f", 1 / 1024),
        error_cell(r), delta_cell(r) if r.get("method") != "fp32" else "–",
        _top1(agreement),
        _num(agreement.get("hidden_code_agreement", float("nan")), ".3f", 100),
        *[_latency({"latency": r.get(latency_field)}, k) for k in keys],
        _speedup(r, baselines or {}, latency_field),
    ]


def deployment_table(records: Sequence[dict[str, Any]]) -> str:
    """Per backend: file size, agreement with the PyTorch model, latency median ± IQR.

    Agreement is with the Brevitas model: top-1 on the test split, and for the integer engine
    the fraction of identical LSTM hidden-state codes. ONNX Runtime rows name the optimisation
    level they were timed at (the fastest that passed conformance).
    OpenVINO gets a second row for latency at the runtime's default precision (its error and
    agreement are measured at f32 only, so that row repeats them).
    """
    keys = latency_keys(records)
    baselines = fp32_baselines(records)
    rows = []
    for r in records:
        if r.get("method") == "ptq" or r.get("seed") is not None:
            continue
        backend = _label(r.get("backend", "?"))
        variant = r.get("runtime_variant")
        if r.get("latency_default_precision"):
            label = f"{backend} (f32)"
        elif variant and len(((r.get("conformance") or {}).get("max_steps") or {})) > 1:
            label = f"{backend} ({variant.split('_', 1)[-1]})"  # the variant it was timed at, of several
        else:
            label = backend
        if r.get("lstm_graph"):
            label += f", {r['lstm_graph']}"
        rows.append(_deployment_row(r, keys, backend=label, latency_field="latency", baselines=baselines))
        if r.get("latency_default_precision"):
            precision = (r.get("runtime_precision") or {}).get("latency_default_precision", "default")
            rows.append(_deployment_row(r, keys, backend=f"{backend} ({precision}, default)",
                                        latency_field="latency_default_precision", baselines=baselines))
    header = ["model", "precision", "distill", "backend", "status", "file KiB", f"test {error_name(records)} % [95 % CI]",
              "Δ vs fp32, pts [paired 95 % CI]", "top-1 agreement %", "hidden-code agreement %", *[f"{k} ms" for k in keys],
              f"speed-up vs fp32, same runtime ({SPEEDUP_KEY})"]
    return _md_table(header, rows)


def machine_line(doc: ResultsDocument) -> str:
    prov = doc.provenance
    m, v, g = prov["machine"], prov["versions"], prov["git"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    return (f"Machine `{prov['machine_id']}`: {m['arch']}, {m['cpu_model']}, {m['usable_cores']} cores "
            f"(ISA: {', '.join(m.get('isa', [])) or 'n/a'}); {libs}; commit {str(g['commit'])[:10]}"
            f"{' (dirty)' if g.get('dirty') else ''}; {prov['utc']}.")


def _run_load(run: dict) -> str:
    """What other processes did on the machine during the run, as a sentence (or nothing)."""
    load = run.get("load") or {}
    if load.get("other_busy_cores") is None:
        return ""
    return f" Other processes kept {load['other_busy_cores']:.2f} of {load['usable_cores']} cores busy meanwhile."


def render_markdown(doc: ResultsDocument) -> str:
    machines = {r.get("provenance", {}).get("machine_id") for r in doc.records} - {None}
    if len(machines) > 1:
        raise QbenchError(f"{doc.path} mixes records from machines {sorted(machines)}; split them before reporting")
    failed = [r for r in doc.records if r["status"] != STATUS_OK]
    run = doc.provenance.get("run_seconds") or {}
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in (run.get("stages") or {}).items())
    parts = [
        "# qbench results", "", machine_line(doc), "",
        *([f"Last run: {run['wall']:.0f} s wall; by stage: {stages}.{_run_load(run)}", ""] if run else []),
        f"{len(doc.records)} points, {len(failed)} failed. Latency columns are `b<batch>_t<threads>`: "
        "median ± IQR in ms over repeated runs after warm-up; a trailing `~` marks a noisy figure "
        "(measured under load or with a wide spread: the record's `noisy_reason` says which).", "",
        "Errors carry their 95 % interval (Wilson over the clips scored; a clip bootstrap for mAP); "
        "changes carry a paired 95 % interval over the same clips (bootstrap), and a change whose "
        "interval holds 0 is marked *no difference*.", "",
        *(["Multi-label task: *error* is 1 − mAP (macro over classes) throughout, its interval a clip "
           "bootstrap; the PyTorch table gives mAP and the equal error rate (EER, mean over classes) beside it.",
           ""] if multilabel(doc.records) else []),
        f"## Summary: test {error_name(doc.records)} by method and distillation (PyTorch)", "",
        summary_table(doc.records), "",
        *(["## fp32 students over training seeds", "", seeds_table(doc.records), ""] if seeds_table(doc.records) else []),
        "## Error and size (PyTorch)", "", accuracy_table(doc.records), "",
        "## Deployment (backends)", "", deployment_table(doc.records), "",
    ]
    return "\n".join(parts)


GRAPH_TAGS = {"integer_scan": "-scan", "fakequant_unrolled": "-fq"}  # an LSTM's two ONNX lowerings


def _tag(backend: str | None) -> str:
    try:
        return get(str(backend)).tag
    except QbenchError:
        return "?"


def _plot(records: Sequence[dict[str, Any]], x_of, xlabel: str, path: Path, title: str, *,
          tag_backends: bool = False, noisy_of=None) -> None:
    """Error against a cost: colour = student, marker = weight bits, filled = fp32/QAT, hollow = PTQ,
    faint = no distillation (or a noisy latency), error bars = 95 % intervals, a step line per
    student along its fp32/QAT frontier, the chance line (when the records carry it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, ScalarFormatter

    markers = {None: "*", 2: "v", 3: "<", 4: "s", 5: ">", 6: "D", 7: "p", 8: "o"}
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    models = sorted({r["model"] for r in records})
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    seen, placed, by_model, chance, bits_seen = set(), [], {}, None, set()
    for r in records:
        x = x_of(r)
        metrics = r.get("metrics") or {}
        err = metrics.get("error")
        if x is None or err is None or (isinstance(x, float) and math.isnan(x)):
            continue
        chance = metrics.get("chance", chance)
        method = r.get("method", "qat")
        distilled = r.get("distill", "none") != "none"
        label = r["model"]
        colour = colours[r["model"]]
        noisy = bool(noisy_of and noisy_of(r)) or not distilled  # faint: a noisy figure, or no distillation
        ci = metrics.get("ci95")
        if ci and all(v is not None for v in ci):
            ax.errorbar(x, 100 * err, yerr=[[100 * (err - ci[0])], [100 * (ci[1] - err)]], fmt="none",
                        ecolor=colour, alpha=0.35, capsize=2, linewidth=1)
        ax.scatter(x, 100 * err, marker=markers.get(r.get("weight_bits"), "x"), s=46, alpha=0.4 if noisy else 0.85,
                   linewidths=1.4, facecolors="none" if method == "ptq" else colour, edgecolors=colour,
                   linestyles="--" if noisy and distilled else "-")
        bits_seen.add(r.get("weight_bits"))
        if method != "ptq":
            by_model.setdefault(r["model"], []).append((x, 100 * err))
        if tag_backends:
            tag = _tag(r.get("backend")) + GRAPH_TAGS.get(r.get("lstm_graph"), "") + (NOISY_MARK if noisy else "")
            # nudge a tag down while it would sit on one already placed (same place on a log axis)
            dy = 3
            while any(abs(math.log10(x) - math.log10(px)) < 0.04 and abs(100 * err - pe) < 1.2 and abs(dy - pdy) < 7
                      for px, pe, pdy in placed):
                dy -= 7
            placed.append((x, 100 * err, dy))
            ax.annotate(tag, (x, 100 * err), fontsize=6, xytext=(3, dy), textcoords="offset points")
        seen.add(label)
    from qbench.stats import pareto_front

    for model, pts in by_model.items():
        front = [pts[i] for i in pareto_front(pts)]
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=colours[model], alpha=0.5,
                    linewidth=1)
    if chance is not None:
        ax.axhline(100 * chance, color="r", linestyle=":", linewidth=0.9)
    if seen:
        from matplotlib.lines import Line2D

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        key = [Line2D([], [], color=colours[m], marker="o", linestyle="-", label=f"{m} (line: frontier)") for m in models]
        key += [Line2D([], [], color="0.3", marker=markers.get(b, "x"), linestyle="", label="fp32" if b is None else f"w{b}")
                for b in sorted(bits_seen, key=lambda b: -1 if b is None else b)]
        key += [Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="", label="PTQ (hollow)"),
                Line2D([], [], color="0.3", marker="o", alpha=0.4, linestyle="", label="no KD or noisy (faint)")]
        if chance is not None:
            key.append(Line2D([], [], color="r", linestyle=":", label=f"chance ({100 * chance:.0f} %)"))
        ax.legend(handles=key, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over a point
    else:
        ax.text(0.5, 0.5, "no measured points", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {error_name(records)} %")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_plots(doc: ResultsDocument, out_dir: Path) -> list[Path]:
    """Pareto plots: error against packed size, and against batch-1 single-thread latency."""
    ok = [r for r in doc.records if r["status"] == STATUS_OK and r.get("role") != "teacher"]
    torch_points = [r for r in ok if r.get("backend") == REFERENCE]
    size_path, lat_path = out_dir / PLOT_SIZE, out_dir / PLOT_LATENCY
    _plot(torch_points, lambda r: r.get("packed_bytes"), "packed size (bytes)", size_path,
          "Error against packed model size (marker = weight bits; filled = fp32/QAT, hollow = PTQ)")
    lat_points = [r for r in ok if r.get("method") != "ptq"]
    _plot(lat_points, lambda r: ((r.get("latency") or {}).get("b1_t1") or {}).get("median_ms"),
          "latency, batch 1, 1 thread (ms)\npt = PyTorch, int = integer engine, ort = ONNX Runtime, ov = OpenVINO f32",
          lat_path, f"Error against latency (all backends; dashed, {NOISY_MARK} = noisy figure)", tag_backends=True,
          noisy_of=lambda r: ((r.get("latency") or {}).get("b1_t1") or {}).get("noisy"))
    return [size_path, lat_path]


def render(doc: ResultsDocument, out_dir: Path | None = None) -> list[Path]:
    """Write the Markdown table, CSV and plots for ``doc`` beside it (or into ``out_dir``)."""
    out_dir = Path(out_dir) if out_dir else doc.path.parent
    md_path, csv_path = out_dir / TABLE_NAME, out_dir / CSV_NAME
    atomic_write_text(md_path, render_markdown(doc))
    atomic_write_text(csv_path, records_frame(doc.records).to_csv(index=False))
    return [md_path, csv_path, *render_plots(doc, out_dir)]
