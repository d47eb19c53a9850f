"""Registration settings as data: SAMRI's phases and the faster flavours, in JSON files.

``samri_ml/data/registration/<flavour>.json`` holds, per flavour, the per-phase antsRegistration
parameters (SAMRI's ``GENERIC_PHASES`` layout), which phases each stream runs, the winsorisation
of each stream and the N4 settings. :func:`registration_inputs` turns a list of phases into the
inputs of :class:`nipype.interfaces.ants.Registration` (one list entry per stage).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from samri_ml.errors import SamriMLError

FLAVOURS = ("default", "fast", "samri")
#: keys of a phase that become one list entry per stage of antsRegistration
STAGE_KEYS = (
    "transforms",
    "transform_parameters",
    "number_of_iterations",
    "metric",
    "metric_weight",
    "radius_or_number_of_bins",
    "sampling_strategy",
    "sampling_percentage",
    "convergence_threshold",
    "convergence_window_size",
    "smoothing_sigmas",
    "sigma_units",
    "shrink_factors",
    "use_histogram_matching",
)


def load_flavour(flavour: str = "default") -> dict:
    """Read a flavour's JSON (a name from :data:`FLAVOURS` or a path to a JSON file).

    Returns a fresh copy each time (the parsed files are cached, per file and modification
    time): a caller may change it without changing what the next caller gets.
    """
    path = Path(flavour)
    stamp = path.stat().st_mtime_ns if flavour not in FLAVOURS and path.is_file() else None
    return copy.deepcopy(_read_flavour(flavour, stamp))


@lru_cache
def _read_flavour(flavour: str, stamp) -> dict:
    if flavour in FLAVOURS:
        text = resources.files("samri_ml").joinpath(f"data/registration/{flavour}.json").read_text()
    else:
        path = Path(flavour)
        if not path.is_file():
            raise SamriMLError(
                f"unknown registration flavour {flavour!r}; hint: one of {', '.join(FLAVOURS)} "
                "or a path to a JSON file in their format"
            )
        text = path.read_text()
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as err:
        raise SamriMLError(f"registration flavour {flavour!r} is not valid JSON ({err})") from err
    for key in ("phases", "streams", "winsorize", "n4", "registration"):
        if key not in settings:
            raise SamriMLError(f"registration flavour {flavour!r} lacks the {key!r} section")
    return settings


def _none(value):
    """JSON cannot say Python's ``None`` inside lists as SAMRI did; "None" stands for it."""
    if isinstance(value, list):
        return [_none(v) for v in value]
    return None if value == "None" else value


def stream_phases(flavour: str, stream: str) -> list[str]:
    """The names of a stream's phases, in order (``"streams"`` of the flavour).

    Raises
    ------
    SamriMLError
        The flavour has no such stream.
    """
    try:
        return list(load_flavour(flavour)["streams"][stream])
    except KeyError as err:
        raise SamriMLError(f"flavour {flavour!r} has no phase or stream {err}") from err


def registration_inputs(flavour: str, stream: str, phases: list[str] | None = None) -> dict:
    """Inputs of ``nipype.interfaces.ants.Registration`` for one stream of a flavour.

    Parameters
    ----------
    flavour : str
        ``default``, ``fast``, ``samri`` or a JSON path.
    stream : str
        ``structural``, ``functional_to_structural`` or ``functional_to_template``.
    phases : list of str, optional
        Run these phases of the stream only (default: all). Phases after the stream's first
        continue from a transform given as ``initial_moving_transform``, so the flavour's
        centre-of-mass initialisation is left out.

    Returns
    -------
    dict
        Keyword arguments: per-stage lists (``transforms``, ``metric``... one entry per phase),
        winsorisation of the stream, and the flavour's global options (``float``,
        ``write_composite_transform``, ...).
    """
    settings = load_flavour(flavour)
    names = stream_phases(flavour, stream)
    chosen = names if phases is None else list(phases)
    for name in chosen:
        if name not in settings["phases"]:
            raise SamriMLError(f"flavour {flavour!r} has no phase or stream {name!r}")
    if chosen and chosen[0] != names[0]:
        settings["registration"].pop("initial_moving_transform_com", None)
    inputs = {key: [_none(_setting(settings, flavour, "phases", name, key)) for name in chosen]
              for key in STAGE_KEYS}
    # a stage with a single metric is given as scalars, a multi-metric stage as lists
    inputs["transform_parameters"] = [tuple(p) for p in inputs["transform_parameters"]]
    lower, upper = _setting(settings, flavour, "winsorize",
                            "functional" if stream.startswith("f") else stream)
    inputs.update(winsorize_lower_quantile=lower, winsorize_upper_quantile=upper)
    inputs.update(settings["registration"])
    inputs["dimension"] = 3
    return inputs


def _setting(settings: dict, flavour: str, *keys: str):
    """``settings[keys[0]][keys[1]]...``; a one-line error naming the first key a flavour JSON
    lacks (a phase without ``use_histogram_matching`` was a bare ``KeyError``)."""
    value = settings
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise SamriMLError(
                f"registration flavour {flavour!r} lacks {'.'.join(keys[:depth + 1])!r}; hint: "
                "compare with samri_ml/data/registration/default.json")
        value = value[key]
    return value


def n4_inputs(flavour: str, stream: str) -> dict:
    """Inputs of ``nipype.interfaces.ants.N4BiasFieldCorrection`` for a stream."""
    settings = load_flavour(flavour)
    return dict(_setting(settings, flavour, "n4",
                         "functional" if stream.startswith("f") else "structural"))


def n_stages(flavour: str, stream: str) -> int:
    """How many antsRegistration stages a stream has (one mask entry is needed per stage)."""
    return len(stream_phases(flavour, stream))


def n4_uses_mask(flavour: str) -> bool:
    """Does N4 bias correction estimate the field within the brain mask (``"n4_mask"``,
    default true: the seed's "Generic Masked" workflow) or on the whole image?

    ``default`` and ``fast`` fit it on the whole image: with the mask-restricted field (the
    seed's wiring, kept in ``samri``) an imperfect U-Net mask cost one example subject 0.04 Dice;
    on the whole image masked registration matches unmasked (docs/results.rst)."""
    return bool(load_flavour(flavour).get("n4_mask", True))


def moving_mask_stages(flavour: str, stream: str, phases: list[str] | None = None) -> list[bool]:
    """Per stage of a stream: does the moving-image (brain) mask apply?

    A phase with ``"moving_mask": false`` runs on the whole moving image (``NULL`` mask), as
    some rodent pipelines do for the first, coarse stage (e.g. RABIES). ``samri`` keeps the
    seed's "Generic Masked" workflow, every stage masked. ``default`` and ``fast`` register
    their linear phases brain to brain where a mask is known (:func:`brain_phases`) and mask
    the SyN stage only (since 2026-12-01's seventh session): with every stage masked, the
    real skull-on sammba head registered to DSURQE reached warped-mask Dice 0.66-0.72 against
    0.82 unmasked (the linear MI stages shrank the brain into the mask), with SyN alone masked
    0.81-0.84.
    """
    settings = load_flavour(flavour)
    return [bool(settings["phases"][name].get("moving_mask", True))
            for name in (stream_phases(flavour, stream) if phases is None else phases)]


def mask_dilation(flavour: str) -> int:
    """Voxels by which the subject's brain mask grows before it restricts antsRegistration's
    metric (``"moving_mask_dilation"``, default 0: the seed's tight mask).

    A mask that ends exactly at the brain's edge leaves that edge, the strongest feature the
    linear stages have, out of the metric: on the example data one subject's masked
    registration diverged in the affine stage (Dice 0.14) with a mask of Dice 0.94; with the
    mask grown by 1-2 voxels it reached 0.973, as unmasked (docs/results.rst). ``default`` and ``fast``
    say 8 voxels (by 2 before 2026-12-02, which cost a real skull-on head 0.005 Dice against
    unmasked, where 8 gains 0.003-0.004), for their SyN stage only (:func:`moving_mask_stages`;
    their linear phases run brain to brain, :func:`brain_phases`); the template's own mask is
    used as given.
    """
    return int(load_flavour(flavour).get("moving_mask_dilation", 0))


def brain_phases(flavour: str, stream: str) -> list[str]:
    """The first phases of a stream, which run brain to brain where a brain mask is known
    (``--masking unet`` or ``input``; ``"brain_extracted"``: stream -> phases, default none).

    Those phases register the bias-corrected scan times its mask to the template (or, for
    ``functional_to_structural``, the structural scan) times its own mask, with that mask
    grown by :func:`brain_fixed_mask_dilation` voxels as the only mask; the later phases run
    on the whole images from the transform found, in a second antsRegistration call, with the
    masks as :func:`moving_mask_stages` and :func:`mask_dilation` say. The transform is always
    applied to the whole, unmasked scan.

    ``default`` and ``fast`` run their linear phases brain to brain and SyN on the whole images
    (since 2026-12-02's ninth session); the functional run's one translation to its
    structural scan runs brain to brain too (the real sammba EPI: 0.85 of its bright voxels in
    the template's mask after it, 0.81 unmasked, 0.26-0.44 with the masks on the whole
    images). The real skull-on sammba head registered to DSURQE, fast flavour, one thread per
    ANTs call, warped-mask Dice: unmasked 0.832; the mask on SyN
    only (the wiring before) 0.836; the linear phases brain to brain 0.860 after them, 0.884
    after SyN on the whole images. On the example phantoms, whose reference masks leave a CSF
    rim out that the U-Net includes, every phase brain to brain fell to 0.93 (the brains'
    outlines matched, not their insides), where SyN on the whole images keeps 0.972-0.975
    (docs/results.rst). Both images must be stripped: with the template whole under its mask, the affine
    phase of ``default`` zoomed the stripped brain until the template's mask held brain only
    (Dice 0.66). ``samri`` keeps the seed's wiring.
    """
    names = stream_phases(flavour, stream)
    chosen = list(load_flavour(flavour).get("brain_extracted", {}).get(stream, []))
    if chosen != names[: len(chosen)]:
        raise SamriMLError(
            f"registration flavour {flavour!r}: the brain_extracted phases of {stream} "
            f"({', '.join(chosen)}) must be its first phases ({', '.join(names)})")
    return chosen


def brain_fixed_mask_dilation(flavour: str) -> int:
    """Voxels by which the fixed image's brain mask grows to make the fixed-image mask of a
    brain-to-brain registration (:func:`brain_phases`; ``"brain_fixed_mask_dilation"``,
    default 4): the metric then sees the brain's edge against the zero background on both
    sides, so that shrinking or growing the brain costs (4 and 8 voxels gave the same Dice
    on the sammba head, to 0.0012)."""
    return int(load_flavour(flavour).get("brain_fixed_mask_dilation", 4))


def masked_image_file(in_file, mask_file, out_dir) -> str:
    """Write ``in_file`` times the binary ``mask_file`` into ``out_dir``; returns the new path
    (float32, ``in_file``'s header and affine).

    The two must have the same voxel grid; only their shapes are compared, voxel for voxel, as
    the command line compares a template with its mask: the mask of a scan comes from the scan
    itself, and the bias-corrected scan that ANTs writes may spell the same grid with a
    slightly different affine (ITK keeps no shear and rounds in float32)."""
    import nibabel as nb

    from samri_ml.masking.predict import apply_mask

    out = Path(out_dir) / Path(in_file).name.replace(".nii", "_brain.nii")
    nb.save(apply_mask(str(in_file), str(mask_file), check_affine=False), str(out))
    return str(out)


def dilate_mask_file(in_file, voxels: int, out_dir) -> str:
    """Write ``in_file``'s mask grown by ``voxels`` (6-connected steps) into ``out_dir``;
    returns the new path (uint8, same grid and header; 3D, also from a mask saved as 4D of one
    volume)."""
    import nibabel as nb
    import numpy as np
    from scipy import ndimage

    from samri_ml.io import load_nifti

    img = load_nifti(in_file, allow_4d=False, check_values=False)
    mask = np.asarray(img.dataobj) > 0
    if voxels > 0:
        mask = ndimage.binary_dilation(
            mask, ndimage.generate_binary_structure(3, 1), iterations=int(voxels)
        )
    name = Path(in_file).name.replace(".nii", f"_dil{int(voxels)}.nii")
    out = Path(out_dir) / name
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), img.affine, header), str(out))
    return str(out)
