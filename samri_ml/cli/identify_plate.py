"""``samri_ml-identify-plate``: rank the Allen Reference Atlas plates for microscopy sections."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samri_ml.bids import atomic_write_text
from samri_ml.cli._common import (
    HelpFormatter,
    add_plate_model_options,
    add_threads_option,
    add_version_option,
    check_output_dir,
    check_output_file,
    print_line,
    refuse_empty_paths,
    refuse_missing_inputs,
    refuse_missing_options,
    set_tf_threads,
    terminate_as_interrupt,
    write_output_text,
)
from samri_ml.errors import SamriMLError
from samri_ml.io import json_dumps
from samri_ml.plates.data import IMAGE_SUFFIXES, MONTAGE_SUFFIX, is_montage

PROG = "samri_ml-identify-plate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Rank all atlas plates for each section image (best first) with the shipped "
        "Siamese embedding and plate index. Prints the top K plates per image; --json writes "
        "the full rankings, distances, per-region plates and the estimated cutting tilt.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="section images (PNG/JPEG/TIFF)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    p.add_argument("--top", type=int, default=5, metavar="K", help="plates to print per image")
    p.add_argument(
        "--montage", metavar="DIR",
        help="also write a PNG per image into DIR (created): the section beside its top K "
        "plates (at least 5), named after the image, e.g. 101.png_plates.png",
    )
    p.add_argument(
        "--atlas", metavar="DIR", help="re-index another atlas: folder of plates N.jpg|png|tif. "
        "The 'uncertain' flag and the turn-back of sections far from every plate stay on only "
        "where DIR holds the model's own plates (or some of them); otherwise a note says so",
    )
    add_plate_model_options(p)
    p.add_argument(
        "--no-regions", action="store_true", help="skip the per-region (cutting-angle) "
        "analysis, the plate of each region and the tilt (with it a section takes about "
        "three times as long; the shipped indexes rank by the whole section alone, so the "
        "ranking stays the same)"
    )
    add_threads_option(p)
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    add_version_option(p)
    return p


def _check_args(parser, args) -> None:
    refuse_empty_paths(parser, args, ("--json", "--montage", "--atlas", "--model", "--index"))
    if args.top < 1:
        parser.error("--top must be at least 1")
    if args.atlas and not Path(args.atlas).is_dir():
        parser.error(f"--atlas {args.atlas}: not a directory")
    refuse_missing_inputs(parser, args.images)
    refuse_missing_options(parser, args, ("--model", "--index"))  # they exited 1
    if args.json:
        check_output_file(parser, "--json", args.json, args.images, IMAGE_SUFFIXES, "OUT.json")
    if args.montage:
        check_output_dir(parser, f"--montage {args.montage}", args.montage)


#: images read and ranked at a time: one line each is printed as a chunk is done, and the
#: memory stays that of one chunk (every image used to be read before the first was ranked)
CHUNK = 32
#: and at most about this many pixels a chunk (32 whole-slide scans of 12000 x 9000 px held
#: 3.5 GB, and nothing was printed until all 32 were read and ranked)
CHUNK_PIXELS = 100_000_000


def _read_chunks(images, bad: list | None = None):
    """``(paths, images)`` read :data:`CHUNK` images or :data:`CHUNK_PIXELS` pixels at a time
    (the image that passes the budget ends its chunk); an image that cannot be read is added
    to ``bad`` (its :class:`SamriMLError`) and left out, or, without ``bad``, stops the
    reading (samri_ml-evaluate-plates: an MAE would leave it out)."""
    from samri_ml.plates.data import read_image

    paths, imgs, pixels = [], [], 0
    for path in images:
        try:
            imgs.append(read_image(path))
        except SamriMLError as err:
            if bad is None:
                raise
            bad.append(err)
            continue
        paths.append(str(path))
        pixels += imgs[-1].size
        if len(imgs) == CHUNK or pixels >= CHUNK_PIXELS:
            yield paths, imgs
            paths, imgs, pixels = [], [], 0
    if imgs:
        yield paths, imgs


def run(args) -> int:
    """Rank ``args.images``; SIGTERM (a cluster ending the job) is taken as Ctrl-C throughout,
    so the sections ranked so far are kept (:func:`_keep_interrupted`) and no temporary file
    of the JSON is left behind."""
    with terminate_as_interrupt():
        return _run(args)


def _run(args) -> int:
    from samri_ml.models.inference import PLATE_PARALLEL_OPS

    set_tf_threads(args.threads, PLATE_PARALLEL_OPS)
    from samri_ml.plates.identify import make_identifier

    # CHUNK images (or CHUNK_PIXELS) at a time: one that cannot be read is named at the end,
    # the others are still ranked; each line is printed as its chunk is done
    results, bad, ident, montages, unwritten = {}, [], None, {}, []
    # montages written beside the sections (--montage their folder) came back with them
    # through SECTIONS/*.png: ranked as sections (130.png_plates.png: plate 126), montaged
    ours = [im for im in args.images if is_montage(im)]
    args.images = [im for im in args.images if not is_montage(im)]
    if not args.images:
        raise SamriMLError(f"no section to rank: every image given is a montage of {PROG} "
                           f"(*{MONTAGE_SUFFIX}, e.g. {ours[0]}); hint: rename a section named so")
    if ours:
        print(f"{PROG}: note: {len(ours)} montage(s) of {PROG} (*{MONTAGE_SUFFIX}, e.g. "
              f"{ours[0]}) left out; hint: write them into another folder (--montage DIR)",
              file=sys.stderr)
    # the results are keyed by every path as given (the contract other tools rely on); a
    # file given under several spellings (84.png, ./84.png, a link to it) is ranked once
    given, spellings = list(dict.fromkeys(args.images)), {}
    for im in given:
        spellings.setdefault(Path(im).resolve(), []).append(im)
    twice = len(args.images) - len(spellings)
    if twice:
        print(f"{PROG}: note: {twice} image path(s) repeat a file given before (the same "
              "path, another spelling or a link); ranked once, under each path",
              file=sys.stderr)
    spellings = {names[0]: names for names in spellings.values()}
    args.images = list(spellings)
    try:
        for paths, imgs in _read_chunks(args.images, bad):
            if ident is None:
                ident = make_identifier(args.model, args.index, args.atlas,
                                        variant=args.variant,
                                        hemisections=args.hemisections,
                                        turn_uncertain=not args.upright)
            # read_image made the sections already (rank would make each again)
            ranked = ident.rank_read(imgs, regions=not args.no_regions,
                                     any_orientation=args.any_orientation)
            chunk = {name: res for path, res in zip(paths, ranked, strict=True)
                     for name in spellings[path]}
            results.update(chunk)
            _print_results(args, chunk)
            if args.montage:
                _write_montages(args, ident, paths, imgs, ranked, montages, unwritten)
    except KeyboardInterrupt:
        _keep_interrupted(args, given, results)
        raise
    if not results:
        raise bad[0] if len(bad) == 1 else SamriMLError(
            f"none of the {len(bad)} images could be read (first: {bad[0]})")
    if args.json:
        results = {name: results[name] for name in given if name in results}  # in given order
        try:
            write_output_text(json_dumps(results, indent=1), args.json)  # never half-written
        except OSError as e:
            raise SamriMLError(f"cannot write {args.json}: {e.strerror}") from None
        _note_earlier_interrupted(args.json, results)
    for err in bad:
        print(f"{PROG}: skipped: {err}", file=sys.stderr)
    if bad:
        raise SamriMLError(f"{len(bad)} of {len(args.images)} images could not be read (named "
                           "above, left out of the output); the others are ranked")
    if unwritten:
        raise SamriMLError(f"{len(unwritten)} montage(s) could not be written (named above); "
                           "every image is ranked" + (f" and in {args.json}" if args.json
                                                      else ""))
    return 0


def _note_earlier_interrupted(out, results: dict) -> None:
    """A note where an interrupted run's ``OUT_interrupted.json`` lies beside the ``OUT`` just
    written: it stayed without a word, and a lab could not tell whether its sections were in
    ``OUT`` (kept, not removed: it may hold sections this run did not rank)."""
    from samri_ml.paths import interrupted_path

    kept = interrupted_path(out)
    earlier = _earlier_interrupted(kept)
    if earlier is None:
        return
    missing = [name for name in earlier if name not in results]
    if missing:
        print(f"{PROG}: note: {kept}, of an earlier interrupted run, holds {len(missing)} "
              f"image(s) that {out} does not (e.g. {missing[0]}); hint: rank them again, "
              "or keep the two files", file=sys.stderr)
    else:
        print(f"{PROG}: note: {kept}, of an earlier interrupted run, holds no image that "
              f"{out} does not rank; hint: remove it", file=sys.stderr)


def _earlier_interrupted(kept) -> dict | None:
    """The results an earlier interrupted run kept in ``kept`` (``OUT_interrupted.json``);
    None where there is no such file or it is no JSON object."""
    try:
        earlier = json.loads(Path(kept).read_text())
    except (OSError, ValueError):
        return None
    return earlier if isinstance(earlier, dict) else None


def _keep_interrupted(args, given: list, results: dict) -> None:
    """After Ctrl-C or SIGTERM: the sections ranked so far, in the format of ``--json OUT``,
    written (atomically) to :func:`~samri_ml.paths.interrupted_path` (``OUT_interrupted.json``:
    the name says that it is incomplete, and OUT, which other tools take for the whole
    run's, is not written), and a note that says so. A run of many sections stopped by a
    cluster's time limit used to keep nothing. The images an earlier interrupted run kept
    there that this one did not rank stay in it: a rerun of the others (the note's hint)
    stopped by the same time limit replaced them with its own."""
    if not args.json:
        return
    if not results:
        print(f"{PROG}: note: interrupted before any image was ranked: {args.json} was not "
              "written", file=sys.stderr)
        return
    from samri_ml.paths import interrupted_path

    done = {name: results[name] for name in given if name in results}  # in given order
    kept = interrupted_path(args.json)
    earlier = {name: res for name, res in (_earlier_interrupted(kept) or {}).items()
               if name not in done}
    try:
        atomic_write_text(json_dumps({**done, **earlier}, indent=1), kept)
    except OSError as e:
        print(f"{PROG}: note: interrupted; cannot write {kept}: {e.strerror}", file=sys.stderr)
        return
    also = f" and {len(earlier)} of an earlier interrupted run" if earlier else ""
    print(f"{PROG}: note: interrupted after {len(done)} of {len(given)} images: {kept} holds "
          f"the {len(done)} ranked{also} ({args.json} was not written); hint: rerun the others",
          file=sys.stderr)


def _write_montages(args, ident, paths, imgs, ranked, written: dict, unwritten: list) -> None:
    """``--montage DIR``: one PNG per image, named after it; images of one name from other
    folders get ``_2``, ``_3``... (``written``: the names used so far, across chunks). An
    image whose montage cannot be written is added to ``unwritten``, and the run goes on."""
    from samri_ml.paths import file_name_with
    from samri_ml.plates.data import MONTAGE_SUFFIX
    from samri_ml.plates.montage import write_ranked_montage

    out = Path(args.montage)
    out.mkdir(parents=True, exist_ok=True)
    for path, img, res in zip(paths, imgs, ranked, strict=True):
        name = Path(path).name
        written[name] = written.get(name, 0) + 1
        again = written[name] > 1
        if again:
            name = f"{name}_{written[name]}"
        montage = file_name_with(name, MONTAGE_SUFFIX)
        if again:
            print(f"{PROG}: note: {path}: montage {montage} (an image of the same name came "
                  "first)", file=sys.stderr)
        elif montage != f"{name}{MONTAGE_SUFFIX}":
            print(f"{PROG}: note: {path}: montage {montage} (the name with {MONTAGE_SUFFIX} is "
                  "too long for a file)", file=sys.stderr)
        try:
            write_ranked_montage(ident, img, res, out / montage,
                                 top=max(5, args.top), atlas_dir=args.atlas,
                                 title=Path(path).name)
        except SamriMLError as err:
            # a name too long with the suffix, a full disk: one montage lost, not the run (the
            # rankings of every image done so far, and the JSON, were lost with it)
            print(f"{PROG}: skipped: {err}", file=sys.stderr)
            unwritten.append(path)


def _print_results(args, results: dict) -> None:
    """One line per image: its top plates, and what the regions and the router said."""
    for path, res in results.items():
        top = ", ".join(
            f"{p} ({d:.3f})"
            for p, d in zip(res["ranking"][: args.top], res["distances"][: args.top], strict=True)
        )
        line = f"{path}: {top}"
        if res.get("turned_degrees"):
            line += f"  [came turned {res['turned_degrees']} deg counterclockwise"
            if not args.any_orientation:  # turned back because it was far from every plate
                line += ": far from every plate upright; --upright keeps it as it is"
            line += "]"
        if res.get("read_as"):
            line += f"  [read as the {res['read_as']} of a section]"
        if res.get("may_be_hemisphere"):  # narrower than any whole section
            line += ("  [narrower than any whole section: if it is one hemisphere, "
                     "--hemisections ranks it at a section's scale]")
        if res.get("uncertain"):
            line += "  [uncertain: farther from every plate than any validation section; check"
            line += " the montage (--montage DIR)"
            if not args.any_orientation:  # not turned back: no turn was clearly plate-like
                line += "; if it came turned, --any-orientation tries every turn"
            line += "]"
        if res.get("model") == "multimodal":  # --variant auto sent it to the multimodal model
            line += f"  [multimodal: other modality, p {res['other_modality']:.2f}]"
        if "tilt" in res:
            t = res["tilt"]
            line += (
                f"  | regions D/C/V {res['regions']['dorsal']['plate']}/"
                f"{res['regions']['central']['plate']}/{res['regions']['ventral']['plate']}"
                f" L/R {res['regions']['left']['plate']}/{res['regions']['right']['plate']}"
                f", tilt DV {t['dorsoventral_degrees']} deg"
                + (" (as if a whole section)" if t.get("whole_section") is False else "")
            )
        print_line(line)


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return run(args)


def main(argv=None) -> int:
    """Entry point: exit 0 on success, 2 on usage errors, 1 with a one-line cause otherwise."""
    from samri_ml.cli._common import run_cli

    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
