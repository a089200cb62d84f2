"""What ``qbench search`` writes: ``search.json``, ``pareto.csv``, ``search.md`` and two plots per student.

``search.json`` is a versioned document (``kind: qbench-search``) with the machine's provenance,
both configs, per student its layers, sensitivities (validation error, output SQNR), the Fisher
estimate and its rank agreement, the greedy path, the uniform widths and the QAT confirmations
(test error, paired change against fp32), and the answer. ``pareto.csv`` is one row per scored
configuration (path steps on validation by PTQ, confirmations on test by QAT).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from qbench.records import atomic_write_text

SEARCH_FILE, PARETO_FILE, TABLE_FILE = "search.json", "pareto.csv", "search.md"


def write_outputs(out: Path, cfg, scfg, students: dict[str, dict[str, Any]], answers: dict[str, Any],
                  seconds: float) -> list[Path]:
    """Write ``search.json`` and everything rendered from it; print the summary."""
    from qbench.provenance import provenance
    from qbench.search import DOCUMENT_KIND, SEARCH_SCHEMA_VERSION, reproduce_command

    for model, a in answers.items():
        a["command"] = a["best"] and reproduce_command(model, a["best"], cfg)
    doc = {"schema_version": SEARCH_SCHEMA_VERSION, "kind": DOCUMENT_KIND,
           "provenance": {**provenance(ignore=out), "run_seconds": round(seconds, 1)},
           "config": {"sweep": cfg.to_dict(), "search": scfg.to_dict()}, "students": students, "answer": answers}
    atomic_write_text(out / SEARCH_FILE, json.dumps(doc, indent=1, default=str))
    paths = render_search(doc, out)
    print((out / TABLE_FILE).read_text().split("## Sensitivity")[0])
    return [out / SEARCH_FILE, *paths]


def load(path: Path) -> dict[str, Any]:
    """A stored ``search.json``; a one-line QbenchError when it is not one this qbench reads."""
    from qbench.errors import QbenchError
    from qbench.search import DOCUMENT_KIND, SEARCH_SCHEMA_VERSION

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise QbenchError(f"cannot read search file {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != DOCUMENT_KIND:
        raise QbenchError(f"{path} is not a qbench search file")
    if doc.get("schema_version") != SEARCH_SCHEMA_VERSION:
        raise QbenchError(f"{path} has search schema {doc.get('schema_version')}, this qbench reads {SEARCH_SCHEMA_VERSION}")
    return doc


def render_search(doc: dict[str, Any], out: Path) -> list[Path]:
    """``pareto.csv``, ``search.md`` and the plots of a search document, into ``out``."""
    from qbench.search import SearchConfig

    scfg = SearchConfig.from_dict(doc["config"]["search"])
    paths = [out / PARETO_FILE, out / TABLE_FILE]
    atomic_write_text(paths[0], pareto_frame(doc["students"]).to_csv(index=False))
    atomic_write_text(paths[1], render_markdown(doc))
    for model, s in doc["students"].items():
        paths += [plot_frontier(out / f"frontier_{_file(model)}.png", model, s, scfg),
                  plot_sensitivity(out / f"sensitivity_{_file(model)}.png", model, s)]
    return paths


def _file(model: str) -> str:
    import models

    return models.file_name(model)


def pareto_frame(students: dict[str, dict[str, Any]]):
    import pandas as pd

    rows = []
    for model, s in students.items():
        front = set(s["frontier_steps"])
        for p in s["path"]:
            rows.append({"model": model, "kind": "path", "method": "ptq", "split": "val", "name": p["name"],
                         "bits": p["bits"], "weight_bytes": p["weight_bytes"], "bitops": p["bitops"],
                         "error": p["val_error"], "on_frontier": p["step"] in front})
        for c in s["confirmed"]:
            q = c["qat"]
            rows.append({"model": model, "kind": c["kind"], "method": "qat", "split": "test", "name": c["name"],
                         "bits": c["bits"], "weight_bytes": c["weight_bytes"], "bitops": c["bitops"],
                         "packed_bytes": q.get("packed_bytes"), "error": q.get("error"),
                         "ci95_low": (q.get("ci95") or [None, None])[0], "ci95_high": (q.get("ci95") or [None, None])[1],
                         "delta": q.get("delta"), "delta_ci95_low": (q.get("delta_ci95") or [None, None])[0],
                         "delta_ci95_high": (q.get("delta_ci95") or [None, None])[1],
                         "latency_ms": _latency(c), "status": q["status"]})
    return pd.DataFrame(rows)


def _latency(c: dict[str, Any]) -> float:
    from qbench.search import candidate_latency_ms

    return candidate_latency_ms(c, missing=float("nan"))


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _ci(ci, signed: bool = False) -> str:
    if not ci or None in ci:
        return ""
    f = "+.1f" if signed else ".1f"
    return f" [{100 * ci[0]:{f}}, {100 * ci[1]:{f}}]"


def render_markdown(doc: dict[str, Any]) -> str:
    from qbench.report import _md_table

    scfg = doc["config"]["search"]
    budget = scfg["max_error_increase"]
    lines = ["# qbench mixed-precision search", "",
             f"Cost: **{scfg['cost']}**; budget: at most **{budget:g} points** of test error above the fp32 "
             f"student at 95 % confidence; weight widths {', '.join(map(str, scfg['widths']))}, activations "
             f"{scfg['act_bits']} bits. Run time {doc['provenance']['run_seconds']:.0f} s on "
             f"`{doc['provenance']['machine_id']}`.", ""]
    for model, s in doc["students"].items():
        a = doc["answer"][model]
        lines += [f"## {model} (QAT distilled: {s['distill']})", ""]
        if a["best"]:
            verdict = ("no uniform width is within the budget at 95 % confidence; this mixed one is"
                       if a["best_uniform"] is None else
                       "a mixed configuration is cheaper than every uniform one within the budget" if a["mixed_wins"]
                       else "no mixed configuration beat the best uniform one within the budget")
            lines += [f"**Answer: `{a['best']}`** ({a['best_name']}; cost {a['best_cost']:.4g}); best uniform: "
                      f"`{a['best_uniform']}` (cost {a['best_uniform_cost']:.4g})" if a["best_uniform"] else
                      f"**Answer: `{a['best']}`** ({a['best_name']}; cost {a['best_cost']:.4g}); no uniform width is within the budget",
                      "", f"{verdict}. Reproduce on every backend: `{a['command']}`", ""]
        else:
            lines += [f"No confirmed configuration is within {budget:g} points at 95 % confidence.", ""]
        if a.get("deployment"):
            rows = [[d["backend"] + (f" ({d['lstm_graph']})" if d["lstm_graph"] else ""), d["status"] if d["status"] == "ok"
                     else f"failed: {str(d['reason'])[:80]}", _pct(d["error"]),
                     "–" if not d.get("file_bytes") or d["file_bytes"] != d["file_bytes"] else f"{d['file_bytes']:.0f}",
                     d.get("weight_container") or "–",
                     "–" if d["latency_ms"] is None else f"{d['latency_ms']:.3g}" + ("~" if d.get("noisy") else "")]
                    for d in a["deployment"]]
            lines += ["The answer on every backend (QAT model; ~ = timed under load):", "",
                      _md_table(["backend", "status", "test error %", "file bytes", "weights", "latency ms (b1, 1 thread)"],
                                rows), ""]
        rows, tags = [], confirmed_tags(s)
        for c in sorted(s["confirmed"], key=lambda c: c["weight_bytes"]):
            q = c["qat"]
            rows.append([tags[c["bits"]], c["kind"], f"`{c['bits']}`", f"{q.get('packed_bytes') or float('nan'):.0f}",
                         f"{c['bitops'] / 1e6:.1f}", _pct(q.get("error")) + _ci(q.get("ci95")),
                         (f"{100 * q['delta']:+.1f}" + _ci(q.get("delta_ci95"), signed=True)) if q["status"] == "ok"
                         else f"failed: {str(q['reason'])[:80]}",
                         f"{_latency(c):.3g}" if not math.isnan(_latency(c)) else "–"])
        lines += [_md_table(["tag", "kind", "widths", "packed bytes", "MBitOps", "test error % [95 % CI]",
                             "Δ vs fp32, pts [paired 95 % CI]", "latency ms (b1, 1 thread)"], rows), ""]
    lines += ["## Sensitivity (validation error % with one layer lowered, PTQ)", ""]
    for model, s in doc["students"].items():
        widths = [str(w) for w in scfg["widths"]]
        rows = [[n, str(next(l["params"] for l in s["layers"] if l["name"] == n))]
                + [_pct(s["sensitivity"][n][w]) for w in widths] for n in s["sensitivity"]]
        lines += [f"### {model}", "", _md_table(["layer", "weights"] + [f"w{w}" for w in widths], rows), "",
                  f"Fisher estimate against measured sensitivity: Spearman {s['fisher_spearman']:.2f} "
                  f"over {len(s['sensitivity']) * (len(widths) - 1)} (layer, width) pairs.", ""]
    return "\n".join(lines)


def plot_frontier(path: Path, model: str, s: dict[str, Any], scfg) -> Path:
    """Cost against error: the greedy path (PTQ, validation) as a line with its frontier, uniform
    widths by PTQ (hollow) and QAT (filled) and confirmed mixed configurations (QAT, test) with
    their intervals, the fp32 student with the error budget above it, the teacher and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "weight_bytes" if scfg.cost == "bytes" else "bitops"
    scale, label = (1 / 1024, "weight KiB") if key == "weight_bytes" else (1e-6, "MBitOps per clip")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [p[key] * scale for p in s["path"]]
    ax.plot(xs, [100 * p["val_error"] for p in s["path"]], "-", color="0.6", lw=1, label="greedy path (PTQ, val)")
    front = s["frontier_steps"]
    ax.plot([xs[i] for i in front], [100 * s["path"][i]["val_error"] for i in front], "-o", color="C0", ms=3,
            label="mixed frontier (PTQ, val)")
    ax.scatter([u[key] * scale for u in s["uniform"]], [100 * u["val_error"] for u in s["uniform"]],
               facecolors="none", edgecolors="C1", marker="s", label="uniform (PTQ, val)")
    tags = confirmed_tags(s)
    placed: list[tuple[float, float, int]] = []
    for c in s["confirmed"]:
        q = c["qat"]
        if q["status"] != "ok":
            continue
        colour, marker = ("C1", "s") if c["kind"] == "uniform" else ("C2", "D")
        x, e = c[key] * scale, 100 * q["error"]
        ci = q.get("ci95") or [q["error"], q["error"]]
        ax.errorbar(x, e, yerr=[[e - 100 * ci[0]], [100 * ci[1] - e]], fmt=marker, color=colour, ms=6, capsize=2,
                    label=f"{c['kind']} (QAT, test)")
        dy = -10  # below the point, stepping further down while a tag already sits there
        while any(abs(math.log10(x) - math.log10(px)) < 0.05 and abs(dy - pdy) < 8 and abs(e - pe) < 3
                  for px, pe, pdy in placed):
            dy -= 8
        placed.append((x, e, dy))
        ax.annotate(tags[c["bits"]], (x, e), fontsize=7, xytext=(3, dy), textcoords="offset points")
    fp32 = min((c["qat"]["error"] - c["qat"]["delta"] for c in s["confirmed"] if c["qat"]["status"] == "ok"),
               default=None)
    if fp32 is not None:
        ax.axhline(100 * fp32, color="k", lw=1, ls="--", label="fp32 student (test)")
    if s.get("teacher_test_error") is not None:
        ax.axhline(100 * s["teacher_test_error"], color="C4", lw=1, ls="-.", label="teacher (test)")
        ax.axhspan(100 * fp32, 100 * fp32 + scfg.max_error_increase, color="k", alpha=0.06, label="error budget")
    n_classes = len(s.get("classes", [])) or None
    if n_classes:
        ax.axhline(100 * (1 - 1 / n_classes), color="r", lw=0.8, ls=":", label="chance")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label + "  (tags: uniform wN; mixed M1.. as in search.md)")
    ax.set_ylabel("error %")
    ax.set_title(f"{model}: mixed-precision frontier ({scfg.cost})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confirmed_tags(s: dict[str, Any]) -> dict[str, str]:
    """Short plot and table tags of the confirmed configurations: ``w4`` (uniform), ``M1``, ``M2``...
    (mixed, cheapest first)."""
    from qbench.quant.precision import Precision

    mixed = sorted((c for c in s["confirmed"] if c["kind"] == "mixed"), key=lambda c: c["weight_bytes"])
    tags = {c["bits"]: f"M{i}" for i, c in enumerate(mixed, 1)}
    tags.update({c["bits"]: f"w{Precision.parse(c['bits']).weight_bits}" for c in s["confirmed"] if c["kind"] == "uniform"})
    return tags


def plot_sensitivity(path: Path, model: str, s: dict[str, Any]) -> Path:
    """Heat map: validation error increase (points) with one layer at each width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(s["sensitivity"])
    widths = sorted(s["sensitivity"][names[0]], key=int)
    top = widths[-1]
    grid = np.array([[100 * (s["sensitivity"][n][w] - s["sensitivity"][n][top]) for w in widths] for n in names])
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(widths), 1.0 + 0.3 * len(names)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(widths)), [f"w{w}" for w in widths])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(widths)):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=6,
                    color="w" if grid[i, j] < grid.max() / 2 else "k")
    fig.colorbar(im, ax=ax, label="val error increase, points")
    ax.set_title(f"{model}: one layer lowered (PTQ)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
