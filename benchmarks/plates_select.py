"""Model selection: single runs and their ensembles, exported and measured on val_1 and val_2.

Usage::

    python benchmarks/plates_select.py NAME=MODEL.keras [NAME=MODEL.keras ...] [--out DIR]
        [--select-on val_1|val_2] [--max-members K]

Every model and every ensemble of two or more of them (mean squared embedding distance) is
exported with its plate index into DIR/<names> and ranked on val_1 and val_2 (as shipped:
flip test-time augmentation, no smoothing, no region mixing). Prints one line per candidate,
then the one chosen on ``--select-on`` (lowest MAE, then highest Top-5, then fewest
members): with ``val_1`` (the default) the val_2 numbers of the choice stay unbiased by it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--out", default="/tmp/plates_select")
    ap.add_argument("--select-on", default="val_1", choices=["val_1", "val_2"])
    ap.add_argument("--max-members", type=int, default=0,
                    help="largest ensemble tried (0: all the models)")  # fmt: skip
    args = ap.parse_args()
    unnamed = [m for m in args.models if "=" not in m or m.startswith("=")]
    if unnamed:  # a ValueError traceback from dict() before
        ap.error(f"give each model as NAME=MODEL.keras: {', '.join(unnamed)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.metrics import format_metrics
    from samri_ml.plates.train import export_and_measure, make_ensemble_run

    named = dict(m.split("=", 1) for m in args.models)
    data = existing_data_dir(option=None) / "plates"
    results = {}
    for k in range(1, (args.max_members or len(named)) + 1):
        for combo in itertools.combinations(sorted(named), k):
            name = "+".join(combo)
            run = Path(args.out) / name
            make_ensemble_run([named[c] for c in combo], run)
            m = export_and_measure(run, run / "export", data)
            results[name] = {
                s: {x: m[s][x] for x in ("mae", "top1", "top3", "top5", "top10")}
                for s in ("val_1", "val_2")
            }
            print(
                f"{name:24s} {format_metrics(m['val_1'], 'val_1')} | "
                f"{format_metrics(m['val_2'], 'val_2')}",
                flush=True,
            )
    split = args.select_on
    chosen = min(
        results,
        key=lambda n: (results[n][split]["mae"], -results[n][split]["top5"], n.count("+")),
    )
    print(f"chosen on {split}: {chosen}: val_1 {results[chosen]['val_1']}, "
          f"val_2 {results[chosen]['val_2']}")  # fmt: skip
    (Path(args.out) / "selection.json").write_text(
        json.dumps({"results": results, "select_on": split, "chosen": chosen}, indent=1)
    )


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_select.py", main))
