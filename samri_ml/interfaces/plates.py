"""Nipype interface for atlas-plate identification (thin: the work is in samri_ml.plates)."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    TraitedSpec,
    traits,
)

from samri_ml.errors import SamriMLError
from samri_ml.interfaces._base import SimpleInterface
from samri_ml.interfaces._paths import Directory, File, InFileKeyedInputSpec
from samri_ml.io import json_dumps
from samri_ml.plates.identify import VARIANT_CHOICES


class _IdentifyPlateInputSpec(InFileKeyedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="microscopy section image (PNG/JPEG/TIFF)")
    atlas_dir = Directory(exists=True, desc="atlas folder (N.jpg|png|tif); default: shipped "
                          "index. The first node to use a folder embeds it (132 plates: about "
                          "40 s and 1.3 GB on one thread) and keeps its index in the user's "
                          "cache ($XDG_CACHE_HOME/samri_ml/atlas_index); the others read it")
    variant = traits.Enum(*VARIANT_CHOICES, usedefault=True,
                          desc="shipped model: 'auto' (a modality router picks per section), "
                          "confocal/Nissl ('default') or other modalities ('multimodal')")
    model = File(exists=True, desc="embedding model (.keras); default: the shipped one")
    index = File(exists=True, desc="plate index (.npz); default: the shipped one")
    top = traits.Range(low=1, value=5, usedefault=True, desc="plates shown in the montage")
    regions = traits.Bool(True, usedefault=True, desc="per-region plates and tilt estimate")
    any_orientation = traits.Bool(False, usedefault=True,
                                  desc="the section may come turned by quarter turns")
    upright = traits.Bool(False, usedefault=True,
                          desc="the section is dorsal side up: never turned back (by default "
                          "one far from every plate upright is turned back where a quarter "
                          "turn of it is clearly plate-like)")
    hemisections = traits.Bool(False, usedefault=True,
                               desc="the section may be one hemisphere: also ranked as a left "
                               "and a right half of a section")
    # a Range, as MaskBrain's: -1 ran on every core while MultiProc counted it as freeing one
    num_threads = traits.Range(low=0, value=1, usedefault=True, nohash=True,
                               desc="TensorFlow CPU threads, and the CPUs MultiProc reserves "
                               "for the node (0: TensorFlow's default, every core, but "
                               "reserved as none)")
    model_checksum = traits.Str(usedefault=True,
                                desc="sizes and sha256 of the model and index files used (set "
                                "from 'model' and 'index', else the shipped ones'): part of "
                                "the cache key, so that other weights or another index "
                                "invalidate cached rankings")

    atlas_checksum = traits.Str(usedefault=True,
                                desc="sha256 of the names of atlas_dir's image files and "
                                "the content of its plates (set from 'atlas_dir'): part of "
                                "the cache key, so that "
                                "plates added, removed or replaced (even with their old size "
                                "and time) invalidate cached rankings")

    def _model_checksum_default(self):
        return plates_checksum(self.model, self.index)

    def _atlas_dir_changed(self, new):
        self.atlas_checksum = atlas_checksum(new)

    def _model_changed(self, new):
        self.model_checksum = plates_checksum(new, self.index)

    def _index_changed(self, new):
        self.model_checksum = plates_checksum(self.model, new)

    def get_hashval(self, hash_method=None):
        # the files' content now, when Nipype makes the cache key (not when they were set);
        # in_file's path and content: InFileKeyedInputSpec
        self.model_checksum = plates_checksum(self.model, self.index)
        self.atlas_checksum = atlas_checksum(self.atlas_dir)
        return super().get_hashval(hash_method=hash_method)


def atlas_checksum(folder=None) -> str:
    """:func:`~samri_ml.plates.data.atlas_signature` of an atlas folder (its image files'
    names, its plates' content); ``""`` without a folder, ``unreadable`` where it cannot be
    listed or read (Nipype's own check of the input says so). A Directory input is hashed by
    its path only: plates removed from the folder kept the cached ranking, which still held
    them."""
    if not traits_defined(folder):
        return ""
    from samri_ml.plates.data import atlas_signature

    try:
        return atlas_signature(folder)
    except (OSError, SamriMLError):
        return "unreadable"


def plates_checksum(model=None, index=None) -> str:
    """The files that rank the plates, as :func:`~samri_ml.models.inference.file_checksum`
    values: ``model`` and ``index`` where given (None or undefined: the shipped embedding
    models, indexes and modality router of every variant, which ``variant`` picks from)."""
    from samri_ml.models.inference import input_checksum as checksum
    from samri_ml.plates.identify import VARIANTS, default_model_dir

    def shipped(pattern):
        files = sorted({f for v in VARIANTS for f in default_model_dir(v).glob(pattern)})
        return "+".join(checksum(f) for f in files)

    given_model = model if traits_defined(model) else None
    given_index = index if traits_defined(index) else None
    parts = [f"model {checksum(given_model) if given_model else shipped('plates_*.keras')}",
             f"index {checksum(given_index) if given_index else shipped('plates_*.npz')}"]
    if given_model is None and given_index is None:
        parts.append(f"router {shipped('plates_router*.json')}")
    return "; ".join(parts)


class _IdentifyPlateOutputSpec(TraitedSpec):
    ranking = traits.List(traits.Int, desc="all plate numbers, best first")
    distances = traits.List(traits.Float, desc="embedding distances, same order (ascending)")
    best_plate = traits.Int(desc="the best-matching plate")
    out_json = File(exists=True, desc="ranking, distances, regions and tilt as JSON")
    out_montage = File(exists=True, desc="PNG: the section beside its top plates")


class IdentifyPlate(SimpleInterface):
    """Rank the Allen Reference Atlas plates for one section (Siamese embedding).

    >>> from samri_ml.interfaces.plates import IdentifyPlate
    >>> IdentifyPlate(top=3).inputs.top
    3
    """

    input_spec = _IdentifyPlateInputSpec
    output_spec = _IdentifyPlateOutputSpec

    def _run_interface(self, runtime):
        if self.inputs.upright and self.inputs.any_orientation:  # as the command line refuses
            # a SamriMLError, as every other refusal: a ValueError's line in a crash file
            # read as a failure of the code, not of the node's settings
            raise SamriMLError("IdentifyPlate: upright and any_orientation contradict each "
                               "other (a section dorsal side up, or one that may come turned); "
                               "hint: set one of them")
        from samri_ml.models.inference import run_in_new_process, tensorflow_inherited

        def opt(name):
            value = getattr(self.inputs, name)
            return value if traits_defined(value) else None

        kwargs = {"in_file": self.inputs.in_file, "out_dir": runtime.cwd, "model": opt("model"),
                  "index": opt("index"), "atlas_dir": opt("atlas_dir"),
                  "variant": self.inputs.variant, "regions": self.inputs.regions,
                  "any_orientation": bool(self.inputs.any_orientation),
                  "hemisections": bool(self.inputs.hemisections),
                  "upright": bool(self.inputs.upright),
                  "top": int(self.inputs.top), "num_threads": int(self.inputs.num_threads)}
        if tensorflow_inherited():  # TensorFlow hangs in a forked copy of itself
            out = run_in_new_process(__name__, "identify_file", kwargs)
        else:
            out = identify_file(**kwargs)
        self._results.update(out)
        return runtime


def identify_file(in_file, out_dir, model=None, index=None, atlas_dir=None, variant="auto",
                  regions=None, any_orientation=False, top=5, num_threads=2,
                  hemisections=False, upright=False) -> dict:
    """What :class:`IdentifyPlate` does: rank the plates for one image, write
    ``<name>_plates.json`` (the format of ``samri_ml-identify-plate --json``) and the montage
    ``<name>_plates.png`` into ``out_dir`` (``<name>``: the image's file name with its
    extension, so that ``101.png`` and ``101.jpg`` of one folder keep a montage each); returns
    the interface's outputs."""
    from samri_ml.models.inference import PLATE_PARALLEL_OPS, set_thread_environment
    from samri_ml.paths import file_name_with

    set_thread_environment(num_threads, PLATE_PARALLEL_OPS)
    from samri_ml.plates.data import MONTAGE_SUFFIX, read_image
    from samri_ml.plates.identify import make_identifier
    from samri_ml.plates.montage import write_ranked_montage

    ident = make_identifier(model, index, atlas_dir, variant=variant,
                            hemisections=hemisections, turn_uncertain=not upright)
    img = read_image(in_file)
    res = ident.rank_read([img], regions=regions, any_orientation=any_orientation)[0]
    # the file name with its extension (fname_presuffix drops it): one output per input file;
    # a name too long with the suffixes is cut, with a hash (an OSError failed the node)
    name = os.path.basename(in_file)
    out_json = os.path.join(out_dir, file_name_with(name, "_plates.json"))
    with open(out_json, "w") as f:
        f.write(json_dumps({in_file: res}, indent=1))
    out_png = os.path.join(out_dir, file_name_with(name, MONTAGE_SUFFIX))
    write_ranked_montage(ident, img, res, out_png, top=top, atlas_dir=atlas_dir,
                         title=os.path.basename(in_file))
    return {"ranking": [int(p) for p in res["ranking"]],
            "distances": [float(d) for d in res["distances"]],
            "best_plate": int(res["ranking"][0]), "out_json": out_json, "out_montage": out_png}


def traits_defined(value) -> bool:
    from nipype.interfaces.base import isdefined

    return isdefined(value) and value is not None
