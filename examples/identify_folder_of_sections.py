"""Identify the atlas plate of every section in a folder, as a Nipype workflow.

One ``IdentifyPlate`` node per image (a MapNode, so Nipype's plugins, SLURM included, can spread
the sections over a cluster), then one table of the results: ``OUT_DIR/plates.tsv`` with the best
plate, the top 5, the per-region plates and the estimated tilt of each section, and
``OUT_DIR/montages/``, a PNG per section (the section beside its top-5 plates). Run:

    python examples/identify_folder_of_sections.py SECTIONS_DIR OUT_DIR [--variant multimodal]

(Montages are named after each section's file, extension included: ``101.png_plates.png``, so
that ``101.png`` and ``101.jpg`` of one folder keep one each. Subfolders are not read; a note
names those that hold images.)

(For a single machine, ``samri_ml-identify-plate SECTIONS_DIR/* --json plates.json`` does the
same in one process, and faster: the model is loaded once.)
"""

import argparse
import os
from pathlib import Path

from nipype.interfaces.io import DataSink
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from samri_ml.interfaces import IdentifyPlate
from samri_ml.paths import file_name_with
from samri_ml.plates.data import IMAGE_SUFFIXES, MONTAGE_SUFFIX, image_subfolders, is_montage
from samri_ml.plates.identify import VARIANT_CHOICES

#: memory (GB) MultiProc and the cluster plugins' users reserve for each IdentifyPlate node
IDENTIFY_MEM_GB = 1.5


def write_table(json_files, out_file):
    """One row per section from the nodes' JSON files (the CLI's format, keyed by path)."""
    import json

    header = ["section", "best_plate", "top5", "dorsal", "central", "ventral", "left", "right",
              "dorsoventral_degrees", "mediolateral_degrees"]  # fmt: skip
    rows = ["\t".join(header)]
    for path in json_files:
        with open(path) as f:
            ((section, res),) = json.load(f).items()
        regions, tilt = res.get("regions", {}), res.get("tilt", {})
        row = [section, res["ranking"][0], ",".join(map(str, res["ranking"][:5]))]
        row += [regions.get(r, {}).get("plate", "") for r in header[3:8]]
        row += [tilt.get("dorsoventral_degrees", ""), tilt.get("mediolateral_degrees", "")]
        rows.append("\t".join(map(str, row)))
    with open(out_file, "w") as f:
        f.write("\n".join(rows) + "\n")
    return out_file


def build_workflow(sections, out_dir, variant="auto"):
    """``identify`` (one IdentifyPlate per section) -> ``table``; everything under ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    wf = pe.Workflow(name="identify_sections", base_dir=str(out_dir / "work"))
    # mem_gb: one IdentifyPlate peaks near 0.8 GB (the networks in a new process), and
    # Nipype reserves 0.2 GB per node unless told: MultiProc with memory_gb started four
    # times too many at once
    identify = pe.MapNode(IdentifyPlate(variant=variant), iterfield=["in_file"], name="identify",
                          mem_gb=IDENTIFY_MEM_GB)
    # absolute, links kept (as IdentifyPlate keeps them): resolved, a DataLad dataset's
    # sections were tabled and their montages named by their annex keys
    identify.inputs.in_file = [os.path.abspath(s) for s in sections]
    table = pe.Node(Function(function=write_table, input_names=["json_files", "out_file"],
                             output_names=["out_file"]), name="table")  # fmt: skip
    table.inputs.out_file = str(out_dir / "plates.tsv")
    wf.connect(identify, "out_json", table, "json_files")
    # the montages into OUT_DIR/montages (Nipype deletes outputs that nothing else takes)
    sink = pe.Node(DataSink(base_directory=str(out_dir), parameterization=False), name="sink")
    wf.connect(identify, "out_montage", sink, "montages")
    return wf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sections", type=Path, help="folder of section images (PNG, JPEG, TIFF)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--variant", default="auto", choices=VARIANT_CHOICES,
                   help="shipped model: 'auto' (a router picks per section, the default), "
                   "'default' (confocal/Nissl) or 'multimodal' (other modalities)")
    args = p.parse_args(argv)
    if not args.sections.is_dir():
        p.error(f"{args.sections}: no such folder")
    # hidden files left out: macOS' ._84.png beside 84.png is metadata, not an image
    sections = sorted(f for f in args.sections.iterdir()
                      if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
    # one level deep, as samri_ml-evaluate-plates reads a folder: its subfolders' sections were
    # left out unsaid (that command names them)
    nested = image_subfolders(args.sections)
    if nested:
        print(f"left out: {len(nested)} subfolder(s) of images, not read ("
              f"{', '.join(nested[:3])}{', ...' if len(nested) > 3 else ''}); hint: run the "
              "example on each folder")
    montages = [f for f in sections if is_montage(f)]  # samri_ml-identify-plate's, not sections
    if montages:
        print(f"left out: {len(montages)} montage(s) of samri_ml-identify-plate (e.g. "
              f"{montages[0].name})")
        sections = [f for f in sections if f not in montages]
    # an image that cannot be read is named and left out before the workflow runs (in the
    # MapNode it failed the whole folder, with Nipype's tracebacks and no table)
    from samri_ml.errors import SamriMLError
    from samri_ml.plates.data import read_image

    readable = []
    for section in sections:
        try:
            read_image(section)
            readable.append(section)
        except SamriMLError as err:
            print(f"skipped: {err}")
    if not readable:
        p.error(f"{args.sections}: no readable PNG, JPEG or TIFF images")
    sections = readable
    build_workflow(sections, args.out_dir, args.variant).run()
    # this run's montages (the folder keeps those of sections an earlier run had, renamed or
    # removed since, which were counted too: "2 sections; 3 montages")
    folder = args.out_dir / "montages"
    ours = {file_name_with(s.name, MONTAGE_SUFFIX) for s in sections}
    earlier = [m for m in folder.glob(f"*{MONTAGE_SUFFIX}") if m.name not in ours]
    print(f"{args.out_dir / 'plates.tsv'}: {len(sections)} sections; montages in {folder}"
          + (f" ({len(earlier)} more of an earlier run, e.g. {earlier[0].name}: their sections "
             "are no longer in SECTIONS_DIR)" if earlier else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
