"""Real training/evaluation scans for the masker, and template-mask labels by registration.

The catalogue reads ``../shared/data/mri`` (never copied into the project). Every scan is a
:class:`Scan` with a RAS image, a RAS brain mask, its source (used to keep whole sources or
subjects together when splitting) and how its mask was made:

==============  =====================================================  =========================
source          scans                                                  mask
==============  =====================================================  =========================
dama            20 in-vivo T2, skull-stripped, 0.15 mm                 manual (rim filled, below)
sammba          anat: T2 head with skull, 0.3 mm                       algorithmic (shipped)
sammba          func: 4D EPI head (temporal mean), 0.22x0.25x0.7 mm    anat mask, rigidly registered
emory           T2 template and EPI template (voxel sizes 10x)         template mask
templates       DSURQE MRI average, Allen two-photon average, 0.2 mm   template masks
==============  =====================================================  =========================

A lab's own scans with masks (``samri_ml-train-masker --scans DIR``) are read by
:func:`lab_scans` instead (BIDS-like pairs, ``*_T2w.nii.gz`` beside ``*_desc-brain_mask.nii.gz``).

Registration-derived masks (the seed's way of labelling: register, then take the template mask back
to native space) are computed with ANTs (antspyx) by :func:`register_mask` and cached in a folder. The nirodents
T2w head is not listed: registering the DSURQE template to it (SyN, metric masked by the dilated template
mask) misplaced the brain, so it has no trustworthy mask (it is used for visual checks only). It is
probably a rat: its field of view (28.8 x 24 x 28.8 mm) and the predicted brain (2200 mm^3, 24 mm long:
through all 24 of its 1 mm slices) are a rat's; a mouse brain is 400-750 mm^3 and 12-15 mm long.

The dama images were skull-stripped with a mask about one voxel tighter than their manual masks
(about 16 % of the manual mask is zero in the image, nearly all of it on the outer rim).
Cutting the label to ``image > 0`` (the seed's "zeroed where the image is zero";
``stripped_rim="cut"``, the labels of the models shipped before 2026-12-01's second session)
taught a boundary one voxel (0.15 mm) inside the manual one. By default
(``stripped_rim="fill"``, the shipped model's labels) the rim is filled with the nearest brain
intensity (:func:`fill_stripped_rim`) and the whole manual mask is the label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samri_ml import paths
from samri_ml.bids import atomic_target
from samri_ml.masking import preprocess as pp
from samri_ml.paths import shared_data_dir  # noqa: F401 (re-exported)


@dataclass
class Scan:
    """A real scan with a brain mask, both RAS-oriented arrays."""

    name: str
    source: str
    image: np.ndarray
    mask: np.ndarray
    zooms: tuple[float, float, float]
    label_origin: str
    labels: np.ndarray | None = field(default=None, repr=False)
    path: str = ""
    #: the animal (a lab's ``sub-<label>``): its scans stay on one side of the validation split;
    #: empty where the scan is one animal (its ``name``)
    subject: str = ""


def _load_ras(path, *, mean4d=True):
    from samri_ml.io import load_nifti

    # a truncated scan stopped samri_ml-evaluate-masker with "error: EOFError: Compressed
    # file ended ...", naming no file; load_nifti names it (values unchecked: a label or mask
    # volume may well be all zeros)
    img = load_nifti(path, allow_2d=True, check_values=False, squeeze=False)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and mean4d:
        data = pp.temporal_mean(data)
    ras, ornt = pp.to_ras(data, img.affine)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    zooms = tuple(float(zooms[int(ax)]) for ax in np.argsort(ornt[:, 0]))
    return ras, zooms


def scan_affine(scan: Scan) -> np.ndarray:
    """The affine of ``scan``'s RAS arrays in its file's own positions (mm), as
    ``samri_ml-mask --png`` of that file gives them; voxel sizes from 0 where the file is
    gone, unreadable or of another grid."""
    import nibabel as nb

    fallback = np.diag([*scan.zooms, 1.0])
    try:
        img = nb.load(scan.path) if scan.path else None
    except (OSError, ValueError, nb.filebasedimages.ImageFileError):
        img = None
    if img is None:
        return fallback
    ornt = pp.orientation_of(img.affine)
    shape = img.shape[:3] + (1,) * (3 - len(img.shape[:3]))
    affine = img.affine @ nb.orientations.inv_ornt_aff(ornt, shape)
    ras_shape = tuple(int(shape[int(ax)]) for ax in ornt[:, 0])
    if ras_shape != scan.image.shape[:3] or not np.all(np.isfinite(affine)):
        return fallback
    return affine


def fill_stripped_rim(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with its zero voxels inside ``mask`` set to the nearest non-zero voxel's value.

    For brains skull-stripped with a mask tighter than their reference mask: afterwards the image
    shows tissue wherever the reference says brain. An image without zeros is returned as is.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    holes = (image == 0) & (np.asarray(mask) > 0.5)
    if not holes.any() or not image.any():
        return image
    nearest = ndimage.distance_transform_edt(image == 0, return_distances=False, return_indices=True)
    out = image.copy()
    out[holes] = image[tuple(ix[holes] for ix in nearest)]
    return out


def register_mask(
    moving_path,
    fixed_path,
    fixed_mask_path,
    out_path,
    *,
    transform="SyN",
    mean4d=True,
    initial="centre-of-mass",
) -> Path:
    """Label a scan the seed's way: register it to a reference, take the reference's mask back.

    ``moving_path`` (the scan) is registered to ``fixed_path`` (a template or an anatomical scan of
    the same animal) with the metric restricted to the dilated ``fixed_mask_path``; the mask is
    warped back with the inverse transforms (linear, thresholded at 0.5) and saved on the scan's
    grid at ``out_path``. Cached: an existing ``out_path`` is returned as is.

    ``initial``: ``"centre-of-mass"`` (ANTs' default: the two images' intensity centres are
    matched first; for a template and a scan of another animal) or ``"identity"`` (start from the
    scanner coordinates; for two scans of one session, whose headers already align them).
    """
    if initial not in ("centre-of-mass", "identity"):
        raise ValueError(f"initial must be 'centre-of-mass' or 'identity', not {initial!r}")
    out_path = Path(out_path)
    if out_path.exists():
        return out_path
    # ANTs draws its metric samples from the wall clock unless given a seed, and sums them over
    # threads in a varying order: without both the sammba EPI reference changed between fresh
    # caches (Dice of one model against it 0.70 vs 0.53). ITK reads its thread count once per
    # process, so a process with more threads hands the registration to a one-thread child.
    if os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS") != "1":
        import subprocess
        import sys

        env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
        code = (
            "import sys; from samri_ml.masking.data import register_mask; "
            "register_mask(*sys.argv[1:5], transform=sys.argv[5], mean4d=sys.argv[6] == '1', "
            "initial=sys.argv[7])"
        )
        args = [moving_path, fixed_path, fixed_mask_path, out_path, transform]
        args += [int(mean4d), initial]
        subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, check=True)
        return out_path
    import tempfile

    import ants
    import nibabel as nb

    ref = nb.load(str(moving_path))
    data = np.asarray(ref.dataobj, dtype=np.float32)
    if data.ndim == 4 and mean4d:
        data = pp.temporal_mean(data)
    out_path.parent.mkdir(parents=True, exist_ok=True)  # a fresh cache folder
    # the moving image as ANTs reads it, in a folder of this call's own, removed however the
    # call ends: one name in the cache (<out>_moving.nii.gz) was shared by two runs filling it
    # (evaluate-masker beside train-masker), and the second ended in FileNotFoundError once
    # the first had removed it (or read it half-written); Ctrl-C left it in the cache
    with tempfile.TemporaryDirectory(prefix="samri_ml-") as folder:
        tmp = Path(folder) / "moving.nii.gz"
        nb.save(nb.Nifti1Image(data, ref.affine), str(tmp))
        moving = ants.image_read(str(tmp))
    fixed = ants.image_read(str(fixed_path))
    fmask = ants.image_read(str(fixed_mask_path))
    import ants.config

    seed_before, ants.config._random_seed = ants.config._random_seed, 1
    try:
        reg = ants.registration(
            fixed,
            moving,
            type_of_transform=transform,
            initial_transform="Identity" if initial == "identity" else None,
            mask=ants.iMath(fmask, "MD", 3),
            aff_metric="mattes",
            syn_metric="CC",
            reg_iterations=(40, 20, 0),
        )
    finally:
        ants.config._random_seed = seed_before
    invert = [True] + [False] * (len(reg["invtransforms"]) - 1)
    warped = ants.apply_transforms(
        moving, fmask.astype("float32"), reg["invtransforms"], whichtoinvert=invert
    )
    mask = (warped.numpy() > 0.5).astype(np.uint8)
    # renamed into place: the cache trusts any file there, and one cut short (a full disk, a
    # killed run) was read as the reference mask by every later run
    with atomic_target(out_path, ".nii.gz") as part:
        nb.save(nb.Nifti1Image(mask, ref.affine), str(part))
    return out_path


def _mri_dir(data_dir=None) -> Path:
    """The folder :func:`real_scans` reads (``scans/``, ``templates/``): ``data_dir/mri``, or
    ``data_dir`` itself where it has no ``mri`` folder."""
    root = Path(data_dir) if data_dir else shared_data_dir()
    return root / "mri" if (root / "mri").is_dir() else root


def data_fingerprint(data_dir=None) -> str:
    """sha256 of the relative paths and contents of the files under the ``scans/`` and
    ``templates/`` folders :func:`real_scans` reads (links followed): the data part of a data
    set cache's key. A cache built from other scans (another ``--data-dir``, a scan added,
    replaced or removed) was read back as if it were of these."""
    return _files_fingerprint(_mri_dir(data_dir), ("scans", "templates"))


def _inputs_digest(files) -> str:
    """The first 12 hex digits of the sha256 of ``files``' contents
    (:func:`~samri_ml.models.inference.file_checksum`): the inputs' part of a derived mask's
    cache name."""
    import hashlib

    from samri_ml.models.inference import file_checksum

    joined = "\n".join(file_checksum(f) for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def files_under(folder: Path, pattern: str = "*") -> list[Path]:
    """The files under ``folder`` (any depth) whose names match ``pattern``, sorted, through
    linked folders too: each folder once, by its shortest path (a link loop ends). Hidden
    files and folders (``.git``, ``.datalad``) are not the data: a DataLad dataset's
    ``.git/annex/objects`` holds a copy of each scan, and every git operation changes files in
    ``.git``. ``Path.rglob`` does not follow a linked folder before Python 3.13: a lab's
    ``--scans`` folder of links to its animals' folders lost those animals, unsaid (none
    linked: "no brain masks found")."""
    import fnmatch

    found, seen, queue = [], set(), [Path(folder)]
    for top in queue:  # breadth first: a folder met again deeper (a link) is not read again
        real = os.path.realpath(top)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError:  # gone meanwhile, or not readable
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # a link to a folder too
                queue.append(Path(entry.path))
            elif fnmatch.fnmatchcase(entry.name, pattern):
                found.append(Path(entry.path))
    return sorted(found)


def _files_fingerprint(root: Path, folders, pattern: str = "*") -> str:
    """sha256 of the paths (relative to ``root``) and contents
    (:func:`~samri_ml.models.inference.file_checksum`) of the files under ``root``'s
    ``folders`` whose names match ``pattern`` (:func:`files_under`: hidden ones left out, a
    commit in a DataLad dataset rebuilt a data set of unchanged scans).

    The contents, not the sizes and modification times: a scan replaced by another of its size
    and put back with its time (``cp -p``, ``rsync -a``, an archive) was trained on as the
    cached slices of the scan it replaced. Reading them costs 0.03 s for the shared data
    (20 MB), nothing beside building a data set."""
    import hashlib

    from samri_ml.models.inference import file_checksum

    digest = hashlib.sha256()
    for sub in folders:
        for path in files_under(root / sub, pattern):
            try:
                if not path.is_file():
                    continue
                checksum = file_checksum(path)
            except OSError:  # a dangling link, or a file gone meanwhile: no scan
                continue
            rel = path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{checksum}\n".encode())
    return digest.hexdigest()


def real_scans(
    data_dir=None,
    cache_dir=None,
    *,
    register: bool = True,
    skip: tuple[str, ...] = (),
    stripped_rim: str = "fill",
) -> list[Scan]:
    """All real scans with a mask (see the module table); missing files are skipped.

    ``skip`` lists sources not to load (nor register). ``stripped_rim`` says what to do where a
    skull-stripped scan's image is zero inside its manual mask: ``"fill"`` the image there
    (:func:`fill_stripped_rim`; the label is the whole manual mask; the shipped model's labels)
    or ``"cut"`` the mask to the non-zero image (the labels before 2026-12-01's second session).

    ``cache_dir`` holds registration-derived masks (default ``$XDG_CACHE_HOME/samri_ml/masks``,
    else ``~/.cache/samri_ml/masks``; :func:`samri_ml.paths.cache_dir`);
    with ``register=False`` only scans whose masks exist already are returned.
    """
    mri = _mri_dir(data_dir)
    cache = Path(cache_dir) if cache_dir else paths.cache_dir("masks")
    scans: list[Scan] = []
    if stripped_rim not in ("fill", "cut"):
        raise ValueError(f"stripped_rim must be 'fill' or 'cut', not {stripped_rim!r}")

    def add(name, source, image, mask, origin, labels=None, *, stripped=False):
        if source in skip or not (Path(image).exists() and Path(mask).exists()):
            return
        img, zooms = _load_ras(image)
        msk, _ = _load_ras(mask)
        if stripped and stripped_rim == "fill":
            img = fill_stripped_rim(img, msk)  # skull-stripped tighter than the manual mask
        elif stripped:
            msk = (msk > 0.5) & (img != 0)  # the brain is where both agree
        lab = _load_ras(labels)[0] if labels and Path(labels).exists() else None
        scans.append(Scan(name, source, img, msk > 0.5, zooms, origin, lab, str(image)))

    dama = mri / "scans" / "dama"
    for path in sorted((dama / "image").glob("*.nii.gz")):
        add(
            "dama/" + path.name.split(".")[0],
            "dama",
            path,
            dama / "mask" / path.name,
            "manual",
            dama / "label" / path.name,
            stripped=True,
        )
    sam = mri / "scans" / "sammba"
    add("sammba/anat", "sammba", sam / "anat.nii.gz", sam / "mask.nii.gz", "algorithmic")
    emo = mri / "scans" / "emory_templates"
    add("emory/T2", "emory", emo / "mouseT2tmp.nii", emo / "mousebrainMask.nii", "template")
    add("emory/EPI", "emory", emo / "mouseEPItmp.nii", emo / "mousebrainMask.nii", "template")
    tpl = mri / "templates"
    add(
        "templates/DSURQE",
        "templates",
        tpl / "DSURQE_CCFv3_average_200um.nii.gz",
        tpl / "DSURQE_CCFv3_mask_200um.nii.gz",
        "template",
        tpl / "DSURQE_CCFv3_labels_200um.nii.gz",
    )
    add(
        "templates/Allen",
        "templates",
        tpl / "average_template_200um.nii.gz",
        tpl / "average_template_200um_mask.nii.gz",
        "template",
        tpl / "DSURQE_CCFv3_labels_200um.nii.gz",
    )
    # The sammba EPI and anatomical scan are one session's: the scanner coordinates align them
    # already, and one brain needs no scaling or shear. So: rigid, from the headers. (An affine
    # started by matching centres of mass, the reference until 2026-12-01's third session, put
    # the anat mask below the EPI's brain: the anat's field of view holds much more of the head.)
    derived = [
        (
            "sammba/func",
            "sammba",
            sam / "func.nii.gz",
            sam / "anat.nii.gz",
            sam / "mask.nii.gz",
            ("Rigid", "identity"),
            "anat mask, rigidly registered",
        ),
    ]
    for name, source, moving, fixed, fmask, (transform, initial), origin in derived:
        if source in skip or not (moving.exists() and fixed.exists() and fmask.exists()):
            continue
        # the settings and the inputs are in the cache's file name: a changed recipe, or other
        # scans (another --data-dir, a scan replaced), never reads an old mask
        tag = f"{transform}-{initial}".lower()
        tag += "_" + _inputs_digest((moving, fixed, fmask))
        out = cache / (name.replace("/", "_") + f"_mask_{tag}.nii.gz")
        if not out.exists() and not register:
            continue
        if not out.exists():
            paths.writable_cache(cache)
        register_mask(moving, fixed, fmask, out, transform=transform, initial=initial)
        add(name, source, moving, out, origin)
    return scans


#: the name ending of a brain mask among a lab's scans (what ``samri_ml-register`` writes; the
#: name to give ``samri_ml-mask``'s output): ``<entities>_desc-brain_mask.nii[.gz]``
LAB_MASK_SUFFIX = "_desc-brain_mask"
#: the name ending of one image's mask (``samri_ml-mask IN [IN ...] --out-dir DIR`` writes
#: ``<IN's name>_mask.nii.gz``): ``<image's name>_mask.nii[.gz]`` beside that image
IMAGE_MASK_SUFFIX = "_mask"


def _nifti_stem(path: Path) -> str | None:
    """``path``'s name without ``.nii``/``.nii.gz``; None for a file that is no NIfTI."""
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return None


def _masks_in(masks_dir: Path, images: dict, beside: dict) -> dict:
    """The masks of ``images`` (path: name without .nii[.gz]) in ``masks_dir``, as
    ``samri_ml-mask --out-dir`` names them (:func:`lab_pairs`' ``masks_dir``); ``beside``: the
    images' own masks beside them (an image with both is refused). A mask there of no image is
    named in a note."""
    import warnings

    from samri_ml.errors import SamriMLError, SamriMLNote

    there = {}
    for path in sorted(masks_dir.iterdir()) if masks_dir.is_dir() else []:
        stem = _nifti_stem(path)
        if stem is not None and stem.endswith(IMAGE_MASK_SUFFIX) and path.is_file():
            there.setdefault(stem[: -len(IMAGE_MASK_SUFFIX)], path)
    found, named = {}, {}
    for image, stem in images.items():
        mask = there.get(stem)
        if mask is None:
            continue
        if stem in named:  # samri_ml-mask --out-dir refuses to write it for both
            raise SamriMLError(f"--masks: {named[stem]} and {image} have one name: which one "
                               f"is {mask.name}'s? hint: give them --masks folders of their own")
        if image in beside and beside[image].resolve() != mask.resolve():  # (DIR: its folder)
            raise SamriMLError(f"--scans: {image} has two masks, {beside[image].name} beside it "
                               f"and {mask} in --masks; hint: move the one that is not its brain "
                               "mask away")
        named[stem], found[image] = image, mask
    unused = sorted(set(there) - set(named))
    if unused:
        warnings.warn(f"--masks: {len(unused)} mask(s) in {masks_dir} of no image under "
                      f"--scans, left out: {', '.join(there[s].name for s in unused)}",
                      SamriMLNote, stacklevel=3)
    return found


def lab_pairs(folder, min_subjects: int = 2, *, skip_unmasked: bool = False,
              masks_dir=None) -> list[tuple[Path, Path, str]]:
    """A lab's own training scans under ``folder`` as ``(image, mask, subject)``, from the
    file names and headers alone (checked before TensorFlow starts and the data set is built).

    Each ``<entities>_desc-brain_mask.nii[.gz]`` (any depth) pairs with the images beside it
    that have its entities and one suffix more (``sub-01_ses-1_T2w.nii.gz`` for
    ``sub-01_ses-1_desc-brain_mask.nii.gz``; a T1w beside it shares the mask); an image's own
    ``<image's name>_mask.nii[.gz]`` beside it (``sub-01_T2w_mask.nii.gz``, as ``samri_ml-mask
    --out-dir`` names it) is its mask too, and an image with both is refused (which one is
    the corrected mask?). Images are the NIfTIs without a ``desc-`` entity that are no
    ``_mask``, ``_dseg`` or ``_probseg``. The subject is the ``sub-<label>`` of the name (else
    of a folder above it; else the scan is one animal), so all of an animal's scans stay on
    one side of the validation split, which needs ``min_subjects`` animals (1 to score a model
    on them: ``samri_ml-evaluate-masker --scans``). ``skip_unmasked``: images without a mask
    are left out, named in a note (:class:`~samri_ml.errors.SamriMLNote`), not refused.
    ``masks_dir``: the images' own masks are also looked for there, as ``samri_ml-mask IN [IN
    ...] --out-dir DIR`` writes them (``DIR/<image's name>_mask.nii[.gz]``, one folder for a
    whole BIDS tree); a mask there of no image is named in a note.

    Raises
    ------
    SamriMLError
        For a folder without masks, an image without a mask (unless ``skip_unmasked``) or
        with two, a mask without an image, a mask of another grid than its image, scans of
        one subject, or NIfTI files there by name only (a DataLad dataset not fetched, links
        to nothing, a folder's too): each names the file.
    """
    import warnings

    import nibabel as nb

    from samri_ml.errors import SamriMLError, SamriMLNote
    from samri_ml.io import annex_unfetched, content_missing

    folder = Path(folder)
    if not folder.is_dir():
        raise SamriMLError(f"--scans {folder}: folder not found")
    # nothing in hidden folders: a DataLad dataset's .git/annex/objects holds a copy of each
    # scan (MD5E-s...--<hash>.nii.gz), each refused as an image without its mask
    every = files_under(folder)
    found = [path for path in every if _nifti_stem(path) is not None]
    # a DataLad dataset not fetched, links to scans moved away, an animal's folder linked
    # from a drive not mounted (sub-04 -> /mnt/study/sub-04): there by name only, they were
    # passed over ('no brain masks found; hint: name each scan's mask', or an animal left out)
    missing = [path for path in every if content_missing(path) and (
        _nifti_stem(path) is not None or not (path.suffix or annex_unfetched(path)))]
    if missing:
        raise SamriMLError(f"--scans {folder}: {len(missing)} NIfTI file(s) or linked "
                           f"folder(s) without their content, e.g. {missing[0]}: "
                           f"{content_missing(missing[0])}")
    niftis = {path: _nifti_stem(path) for path in found if path.is_file()}
    masks = {p: s[: -len(LAB_MASK_SUFFIX)] for p, s in niftis.items()
             if s.endswith(LAB_MASK_SUFFIX)}
    # images: the NIfTIs with no desc- entity (derivatives: masks, brains, segmentations)
    images = {p: s for p, s in niftis.items()
              if "_desc-" not in f"_{s}" and not s.endswith(("_mask", "_dseg", "_probseg"))}
    # an image's own mask, as samri_ml-mask --out-dir names it (they were not read: a lab
    # that masked its scans so, then corrected them, could not score or train on them)
    own = {(p.parent, s[: -len(IMAGE_MASK_SUFFIX)]): p for p, s in niftis.items()
           if s.endswith(IMAGE_MASK_SUFFIX) and p not in masks}
    own = {image: own[image.parent, stem] for image, stem in images.items()
           if (image.parent, stem) in own}
    if masks_dir is not None:
        own.update(_masks_in(Path(masks_dir), images, own))
    if not masks and not own:
        raise SamriMLError(f"--scans {folder}: no brain masks (*{LAB_MASK_SUFFIX}.nii.gz, or "
                           f"<image>{IMAGE_MASK_SUFFIX}.nii.gz) found; hint: name each "
                           f"scan's mask like its image with '{LAB_MASK_SUFFIX}' for the "
                           f"suffix, e.g. sub-01_T2w.nii.gz and "
                           f"sub-01{LAB_MASK_SUFFIX}.nii.gz")
    pairs, unmasked = [], []
    for image, stem in images.items():
        prefix = stem.rsplit("_", 1)[0] if "_" in stem else ""
        shared = next((m for m, p in masks.items() if m.parent == image.parent
                       and p == prefix), None) if prefix else None
        if shared is not None and image in own:
            raise SamriMLError(f"--scans: {image} has two masks beside it, {shared.name} and "
                               f"{own[image].name}; hint: move the one that is not its brain "
                               "mask out of the folder")
        mask = own.get(image, shared)
        if mask is None and skip_unmasked:
            unmasked.append(image)
            continue
        if mask is None and not prefix:
            # no entities for a mask to share: the hint below named a mask (T2w_desc-brain_
            # mask) that does not pair with it either
            raise SamriMLError(f"--scans: {image} has no mask beside it, nor can one pair "
                               "with it: its name has no entities (sub-<label>_...); hint: "
                               f"rename it <entities>_{stem}, e.g. sub-01_{stem}.nii.gz "
                               f"beside sub-01{LAB_MASK_SUFFIX}.nii.gz, or name its mask "
                               f"{stem}{IMAGE_MASK_SUFFIX}.nii.gz")
        if mask is None:
            raise SamriMLError(f"--scans: {image} has no mask beside it; hint: put its mask "
                               f"there as {prefix or stem}{LAB_MASK_SUFFIX}.nii.gz, or move "
                               "the image out of the folder")
        img, msk = nb.load(image), nb.load(mask)  # headers only
        if img.shape[:3] != msk.shape[:3] or not np.allclose(img.affine, msk.affine,
                                                             atol=1e-3):
            # where the shapes agree, the affines do not: said (two equal shapes were named)
            moved = float(np.abs(img.affine - msk.affine).max())
            why = (f"({'x'.join(map(str, msk.shape))}) is not on the grid of {image} "
                   f"({'x'.join(map(str, img.shape))})" if img.shape[:3] != msk.shape[:3] else
                   f"has the shape of {image} ({'x'.join(map(str, img.shape[:3]))}) but not "
                   f"its affine (they differ by up to {moved:.3g})")
            raise SamriMLError(
                f"--scans: {mask} {why}; hint: resample the mask to the image (nearest "
                "neighbour), or mask it again with samri_ml-mask")
        subject = next((e for e in stem.split("_") if e.startswith("sub-")), None)
        if subject is None:
            subject = next((d.name for d in image.relative_to(folder).parents
                            if d.name.startswith("sub-")), stem)
        pairs.append((image, mask, subject))
    used = {m for _, m, _ in pairs}
    for mask in masks:
        if mask not in used:
            raise SamriMLError(f"--scans: {mask} has no image beside it; hint: put its image "
                               f"there as {masks[mask]}_<suffix>.nii.gz (e.g. _T2w)")
    if unmasked:  # skip_unmasked: one image without a mask stopped a whole evaluation
        names = ", ".join(path.relative_to(folder).as_posix() for path in unmasked)
        warnings.warn(f"--scans: {len(unmasked)} image(s) without a mask beside them left "
                      f"out: {names}", SamriMLNote, stacklevel=2)
    subjects = sorted({s for _, _, s in pairs})
    if len(subjects) < min_subjects:
        raise SamriMLError(f"--scans {folder}: scans of one subject ({subjects[0]}); the "
                           "validation split needs two at least; hint: add another animal's "
                           "scans (named sub-<label>_...)")
    return pairs


def lab_scans(folder, min_subjects: int = 2, *, pairs=None,
              empty_masks: bool = False) -> list[Scan]:
    """The scans of :func:`lab_pairs`, loaded (RAS; a 4D series as its temporal mean);
    ``pairs``: those :func:`lab_pairs` gave already (its checks and notes not repeated);
    ``empty_masks``: an empty mask is kept (an evaluation scores its scan, with a note)
    rather than refused (training on it would teach the network that no brain is there).

    Raises
    ------
    SamriMLError
        Besides :func:`lab_pairs`' errors, for an empty mask (naming it), unless
        ``empty_masks``.
    """
    from samri_ml.errors import SamriMLError

    folder = Path(folder)
    scans = []
    for image, mask, subject in pairs or lab_pairs(folder, min_subjects):
        data, zooms = _load_ras(image)
        brain = _load_ras(mask)[0] > 0.5
        if not brain.any() and not empty_masks:
            raise SamriMLError(f"--scans: {mask} is empty (no voxel above 0.5); hint: give "
                               "the image's brain mask, 1 inside the brain")
        scans.append(Scan(image.relative_to(folder).as_posix(), "scans", data, brain, zooms,
                          "given", path=str(image), subject=subject))
    return scans


def lab_scans_fingerprint(folder) -> str:
    """The data part of a data set cache's key for ``--scans`` (:func:`lab_scans`): the
    NIfTI files under ``folder`` (the only ones :func:`lab_pairs` reads), as
    :func:`data_fingerprint` for the shared data. Not every file: their content is read, and
    a lab's raw data beside its scans (``sourcedata/``, many GB) cost each run minutes."""
    return _files_fingerprint(Path(folder), (".",), "*.nii*")
