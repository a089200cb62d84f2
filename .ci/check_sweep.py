"""Fail (exit 1) when a sweep's records hold a failed point or an engine that disagrees with Brevitas.

Usage: python .ci/check_sweep.py OUT_DIR. Reads only the stored ``sweep.json``; prints one line
per problem. Engine points pass when every clip whose top two engine logits differ gets
Brevitas' class (exact integer ties are not mismatches).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def problems(doc: dict) -> list[str]:
    out = []
    for r in doc["records"]:
        if r["status"] != "ok":
            out.append(f"failed {r['id']}: {r['error']}")
            continue
        agree = r.get("agreement") or {}
        up_to_ties = agree.get("class_agreement_up_to_ties", agree.get("top1"))
        if r["backend"] == "engine" and (up_to_ties is None or math.isnan(up_to_ties) or up_to_ties < 1.0):
            out.append(f"mismatch {r['id']}: class agreement with Brevitas {up_to_ties}")
        if r.get("latency"):
            out.append(f"timed {r['id']}: latency recorded (emulated timings must not be stored)")
    return out


def main(argv: list[str]) -> int:
    doc = json.loads((Path(argv[1]) / "sweep.json").read_text())
    found = problems(doc)
    for line in found:
        print(line)
    print(f"{len(doc['records'])} points, {len(found)} problem(s)")
    return 1 if found or not doc["records"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
