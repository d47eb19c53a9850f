"""``samri_ml-evaluate-masker``: Dice and correlation tables of a masking model on real scans.

samri_ml-evaluate-masker [--model PATH] [--data-dir DIR] [--sources ...] [--held-out ...]
                         [--json OUT.json] [--rst OUT.rst]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samri_ml import __version__
from samri_ml.cli._common import (
    HelpFormatter,
    add_flip_option,
    add_masker_data_options,
    add_views_option,
    run_cli,
)
from samri_ml.errors import SamriMLError

PROG = "samri_ml-evaluate-masker"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Score a masking model on the real scans of ../shared/data/mri that have a "
        "reference mask: Dice per scan, median per source and over the sources the model was not "
        "trained on, and the seed's correlation table (image vs reference vs predicted mask).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", type=Path, default=None, help="model (default: the shipped one)")
    add_masker_data_options(p)
    p.add_argument(
        "--sources",
        nargs="*",
        default=None,
        help="only these sources (dama sammba emory templates)",
    )
    p.add_argument(
        "--held-out",
        nargs="*",
        default=None,
        help="sources the model was not trained on (default: read from the model's "
        "_training.json beside it)",
    )
    p.add_argument(
        "--phantom",
        action="store_true",
        help="also score the skull-on T2/T1/EPI phantom of samri_ml.example (seed 0)",
    )
    add_views_option(p)
    add_flip_option(p)
    p.add_argument("--json", type=Path, default=None, help="write per-scan rows here")
    p.add_argument("--rst", type=Path, default=None, help="write the tables here")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")
    return p  # fmt: skip


def _held_out(model_path: Path) -> list[str]:
    info = model_path.with_name(model_path.stem + "_training.json")
    if info.is_file():
        return list(json.loads(info.read_text())["config"]["holdout"])
    return []


def phantom_scans(seed: int = 0):
    """The example phantom's T2w, T1w and EPI heads as :class:`~samri_ml.masking.data.Scan`."""
    import numpy as np

    from samri_ml.example import make_template
    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.data import Scan

    tpl = make_template(seed, contrasts=("t2", "t1", "epi"))
    mask = np.asarray(tpl["mask"].dataobj) > 0
    out = []
    for key in ("T2w", "T1w", "bold"):
        img = tpl[key]
        data, _ = pp.to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        out.append(Scan(f"phantom/{key}", "phantom", data, pp.to_ras(mask, img.affine)[0],
                        zooms, "phantom truth"))  # fmt: skip
    return out


def _main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from samri_ml.masking.data import real_scans, shared_data_dir
    from samri_ml.masking.evaluate import by_source, evaluate, report
    from samri_ml.masking.predict import default_model_path, load_model

    data_dir = args.data_dir or shared_data_dir()
    if not Path(data_dir).is_dir():
        raise SamriMLError(f"{data_dir}: data folder not found; hint: pass --data-dir")
    model_path = args.model or default_model_path()
    held_out = args.held_out if args.held_out is not None else _held_out(model_path)
    all_sources = ("dama", "sammba", "emory", "templates")
    skip = tuple(s for s in all_sources if args.sources and s not in args.sources)
    scans = real_scans(data_dir, args.cache_dir, skip=skip, stripped_rim=args.stripped_rim)
    if args.phantom:
        scans += phantom_scans()
        held_out = [*held_out, "phantom"]
    if not scans:
        raise SamriMLError(f"no scans with masks found under {data_dir}")
    rows = evaluate(scans, load_model(model_path), tuple(args.views), flip=args.flip)
    text = report(rows, held_out)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "by_source": by_source(rows, held_out),
                                         "held_out": held_out}, indent=1))  # fmt: skip
    if args.rst:
        args.rst.write_text(text)
    return 0


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
