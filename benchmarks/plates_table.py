"""Table 1 style summary of training runs: val_2 metrics of the checkpoint chosen on val_1.

Usage::

    python benchmarks/plates_table.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is an output folder of ``samri_ml-train-plates`` (config.json, history.json).
Prints an RST table: loss, batch, input size, backbone, learning rate, steps run, chosen step,
val_1 MAE, val_2 MAE / Top-1 / Top-3 / Top-5 / Top-10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(runs: list[str]) -> None:
    head = (
        "loss",
        "batch",
        "px",
        "backbone",
        "lr",
        "init",
        "steps",
        "chosen",
        "val_1 MAE",
        "val_2 MAE",
        "Top-1",
        "Top-3",
        "Top-5",
        "Top-10",
    )
    rows = []
    for run in runs:
        try:
            cfg = json.loads((Path(run) / "config.json").read_text())
            hist = json.loads((Path(run) / "history.json").read_text())
        except (OSError, ValueError) as err:  # a traceback before
            raise SystemExit(f"benchmarks/plates_table.py: error: {run}: not a training run of "
                             f"samri_ml-train-plates ({type(err).__name__}: {err})") from None
        if "loss" not in cfg or not hist:  # an ensemble of plates_select: a KeyError before
            raise SystemExit(f"benchmarks/plates_table.py: error: {run}: an ensemble or a run "
                             "without a training history; hint: give the members' runs")
        best = min(hist, key=lambda r: (r["val_1"]["mae"], r["step"]))
        v2 = best["val_2"]
        rows.append(
            (
                cfg["loss"],
                str(cfg["batch_size"]),
                str(cfg["size"]),
                f"{cfg['backbone']}-w{cfg['width']}"
                if cfg["backbone"] == "small"
                else cfg["backbone"],
                f"{cfg['learning_rate']:g}",
                Path(cfg["init"]).parent.name or cfg["init"] if cfg.get("init") else "scratch",
                str(hist[-1]["step"]),
                str(best["step"]),
                f"{best['val_1']['mae']:.2f}",
                f"{v2['mae']:.2f}",
                *(f"{100 * v2[f'top{k}']:.0f}%" for k in (1, 3, 5, 10)),
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join("=" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(line)


if __name__ == "__main__":
    # --help printed a traceback ('--help/config.json': no such file)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="output folders of samri_ml-train-plates")
    main(parser.parse_args().runs)
