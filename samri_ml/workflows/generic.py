"""``init_generic_wf``: SAMRI's generic-prep for one subject/session, with QC and derivatives."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from samri_ml.bids import is_label, parse_entities, raw_source_uri
from samri_ml.errors import SamriMLError, SamriMLNote
from samri_ml.func import (
    MAX_TR_SECONDS,
    MIN_SLICE_TIMING_VOLUMES,
    SLICE_ENCODING_DIRECTIONS,
    header_slice_axis,
    is_repetition_time,
    is_slice_timing,
    slice_axis,
    too_few_volumes_note,
)
from samri_ml.interfaces._paths import IdentityInterface
from samri_ml.interfaces.bids import DerivativesDataSink
from samri_ml.io import check_dimensions
from samri_ml.workflows.registration import (
    _check,
    _template_binary_mask,
    init_functional_wf,
    init_structural_wf,
)

#: the derivatives sinks run in the submitting process and **every time**: a cached sink (its
#: inputs unchanged) copied nothing, so a rerun did not restore a derivative deleted from
#: OUTPUT_DIR, nor one overwritten by a run with other options (DerivativesDataSink now always
#: runs by itself too). A derivative that holds the same bytes already is not copied again
#: (:func:`samri_ml.bids.atomic_copy`): its modification time stays, and a downstream workflow
#: that hashes it by time does not recompute
SINK_NODE = {"run_without_submitting": True, "overwrite": True}

#: the masks' sidecar (BIDS derivatives: ``Type``; ``Sources`` is added per scan)
MASK_METADATA = {"Type": "Brain",
                 "Description": "brain mask predicted by the samri_ml U-Net (masking 'unet') on "
                                "the raw scan's grid (its temporal mean for a functional run)"}

#: the fields of :func:`init_generic_wf`'s ``outputnode``
OUTPUT_FIELDS = ["anat_preproc", "anat_xfm", "anat_mask", "anat_qc",
                 "bold_preproc", "bold_xfm", "bold_mask", "bold_qc"]


def init_generic_wf(*, template: str, template_mask: str, anat_file: str | None = None,
                    bold_files=(), bold_metadata=None, output_dir: str | None = None,
                    template_name: str = "template", method: str = "composite",
                    flavour: str = "default", masking: str = "none", dummy_scans: int = 10,
                    slice_timing: bool = True, qc: bool = True, workflow_label: str | None = None,
                    omp_nthreads: int = 1, mask_model: str | None = None,
                    name: str = "generic_wf"):
    """SAMRI's generic registration of one subject/session (structural and functional scans).

    Parameters
    ----------
    template, template_mask : str
        The template and its brain mask (paths; 3D images, as ``samri_ml-register`` takes
        them). A mask of other values than 0 and 1
        (probabilities, 0/255) is taken as its voxels above 0.5 by the registration and the
        QC alike (node ``template_binary_mask``; a :class:`~samri_ml.errors.SamriMLNote` says
        so): antsRegistration, given it as it is, took its values below 1 as outside.
    anat_file : str or None
        The structural scan (None for a functional-only session: the runs are then registered
        straight to the template, as ``method='functional'``; ``composite`` and
        ``structural`` say so in a :class:`~samri_ml.errors.SamriMLNote`, as
        ``samri_ml-register`` does of a session without a structural scan).
    bold_files : list of str
        Functional runs (4D).
    bold_metadata : list of dict
        Sidecar metadata of each run (``RepetitionTime`` in seconds, ``SliceTiming``,
        ``SliceEncodingDirection``: without it, the NIfTI header's slice axis where it gives
        one, else ``k``), checked as ``samri_ml-register`` checks the sidecars, before
        anything is built (a ``RepetitionTime`` that is no number above 0 or is over 100 s,
        ``SliceTiming`` that is no list of numbers in the repetition or does not count the
        run's slices, an unknown ``SliceEncodingDirection``: one line naming the run).
    output_dir : str or None
        BIDS-Derivatives folder to write into (None: no data sinks).
    template_name : str
        The ``space-`` entity of the outputs: a BIDS label, letters and digits only.
    method : str
        ``composite``, ``structural`` or ``functional`` (see :func:`init_functional_wf`).
    flavour : str
        Registration flavour (``default``, ``fast``, ``samri`` or a JSON path).
    masking : str
        ``none`` (SAMRI Generic) or ``unet`` (Generic Masked: the U-Net mask feeds
        antsRegistration, and N4 where the flavour says so, in both streams). ``input`` is
        refused: there is no parameter to give the masks (build the streams with
        :func:`init_structural_wf` / :func:`init_functional_wf` and connect
        ``inputnode.in_mask``).
    mask_model : str or None
        The U-Net of ``masking='unet'`` (a ``.keras`` file, e.g. one fine-tuned with
        ``samri_ml-train-masker --scans``); None: the shipped one.
    dummy_scans : int
        Volumes dropped at the start of each run.
    slice_timing : bool
        Correct slice timing where the sidecar gives ``SliceTiming``.
    qc : bool
        Compute VCF and SCF for every registered scan and write them with the derivatives.
    workflow_label : str
        Label recorded with the QC values (default: ``generic`` or ``generic_masked``).
    omp_nthreads : int
        Threads per ANTs call.

    Inputs (``inputnode``)
    ----------------------
    template, template_mask
        Set from the parameters; connect a node of yours to them to give them at run time
        (the sidecars' ``SpatialReference`` still names the ``template`` parameter).

    Outputs (``outputnode``, to connect a larger workflow to)
    ---------------------------------------------------------
    anat_preproc, anat_xfm, anat_mask, anat_qc
        The structural scan in template space, its composite transform (``.h5``), its U-Net
        mask (with masking) and its QC record (``*_desc-qc_metrics.json``, with ``qc``).
    bold_preproc, bold_xfm, bold_mask, bold_qc
        The same of the functional runs: lists, one entry per run, in ``bold_files``' order
        (``bold_xfm`` unless ``method='structural'``).

    Outputs (in ``output_dir``)
    ---------------------------
    ``*_space-<template>_desc-preproc_<suffix>.nii.gz``, ``*_from-native_to-<to>_mode-image_xfm.h5``,
    ``*_desc-brain_mask.nii.gz`` (with masking), ``*_desc-qc_metrics.json`` and
    ``*_desc-qctable_metrics.tsv``.
    """
    _check(method=method, masking=masking, omp_nthreads=omp_nthreads, dummy_scans=dummy_scans,
           mask_model=mask_model)
    for what, value in (("slice_timing", slice_timing), ("qc", qc)):
        if not isinstance(value, bool | np.bool_):
            # a string 'false' or 'no' is true: the step ran where it was to be left out
            raise SamriMLError(f"{what} {value!r}: must be True or False")
    if not is_label(template_name):
        # 'dsurqec_200micron' (SAMRI's template) wrote space-dsurqec_200micron_desc-preproc_...
        # names, which BIDS tools and samri_ml's own parse_entities read as space 'dsurqec'
        fixed = re.sub(r"[^a-zA-Z0-9]", "", str(template_name)) or "template"
        raise SamriMLError(f"template_name {template_name!r}: a BIDS label is letters and "
                           "digits only (it becomes space-<label> in every file name); hint: "
                           f"template_name={fixed!r}")
    if masking == "input":
        raise SamriMLError(
            "init_generic_wf: masking='input' needs masks, and it takes none; hint: use "
            "masking='unet' or 'none', or build the streams with init_structural_wf/"
            "init_functional_wf(masking='input') and connect your mask to inputnode.in_mask")
    bold_files, bold_metadata = _check_inputs(bold_files, bold_metadata,
                                              anat_file if qc else None, qc)
    # absolute from where the factory is called, as the interfaces' paths (symbolic links
    # kept): Nipype runs each node in a folder of its own, where a relative path failed
    # ('file sub-01/anat/sub-01_T2w.nii.gz does not exist' in s_biascorrect)
    template, template_mask = os.path.abspath(template), os.path.abspath(template_mask)
    anat_file = None if anat_file is None else os.path.abspath(anat_file)
    bold_files = [os.path.abspath(f) for f in bold_files]
    for index, bold in enumerate(bold_files):
        if bold in bold_files[:index]:
            # registered twice into one set of derivatives, or built twice without a word
            raise SamriMLError(f"bold_files[{index}] {bold}: the same run as "
                               f"bold_files[{bold_files.index(bold)}]; hint: give each run once")
    bold_metadata = list(bold_metadata or [{} for _ in bold_files])
    if anat_file is None and not bold_files:
        raise SamriMLError("nothing to register: no structural and no functional scan")
    if output_dir is not None:
        _check_bids_names(anat_file, bold_files)
    images = [_header_of(path) for path in (template, template_mask)]
    for path, img in zip((template, template_mask), images, strict=True):
        if img is not None:  # as samri_ml-register refuses a 4D one (ANTs took its first volume)
            check_dimensions(path, img.shape, allow_4d=False)
    if None not in images:  # readable (a template given later, at run time, is not here)
        from samri_ml.masks import check_template_mask

        check_template_mask(template, template_mask, *images)
    for what, path in (("template", template), ("template_mask", template_mask)) if qc else ():
        # a missing one failed at run time in a node the user never made ('reference_image'
        # trait of an ApplyTransformsInputSpec), where a missing anat_file was refused here
        if not os.path.isfile(path):
            raise SamriMLError(f"{what} {str(path)!r}: no such file; hint: check the path, or "
                               "build with qc=False to set inputnode.template later")
    # each scan's header read once, for the checks and the runs' sidecars
    headers = {path: _header_of(path) for path in [anat_file, *bold_files] if path is not None}
    _check_dimensions(anat_file, bold_files, headers)
    bold_metadata = [_check_run_metadata(index, bold, meta, slice_timing, headers[bold])
                     for index, (bold, meta) in enumerate(zip(bold_files, bold_metadata,
                                                              strict=True))]
    if anat_file is None and method != "functional":
        if bold_files:
            # as samri_ml-register says of a session without a structural scan
            warnings.warn(f"no anat_file: the functional runs are registered straight to the "
                          f"template (as method='functional', not {method!r}); hint: give "
                          "anat_file, or method='functional'", SamriMLNote, stacklevel=2)
        method = "functional"
    label = workflow_label or ("generic_masked" if masking != "none" else "generic")
    wf = pe.Workflow(name=name)
    # relative paths set on it (a template given later) made absolute where they are set
    inputnode = pe.Node(IdentityInterface(["template", "template_mask"]), name="inputnode")
    inputnode.inputs.template = str(template)
    inputnode.inputs.template_mask = str(template_mask)
    outputnode = pe.Node(niu.IdentityInterface(OUTPUT_FIELDS), name="outputnode")
    # one rule for every use of the template's mask (antsRegistration reads a mask as 8-bit
    # integers: a soft mask's values below 1 were outside, where the QC takes those above 0.5)
    binary_mask = _template_binary_mask(wf, (inputnode, "template_mask"))
    # the runs' outputs gathered into one list each, in bold_files' order
    bold_lists = {field: pe.Node(niu.Merge(len(bold_files), no_flatten=True),
                                 name=f"merge_{field}", run_without_submitting=True)
                  for field in ("bold_preproc", "bold_xfm", "bold_mask", "bold_qc")}

    def output(field, node, node_field, index=None):
        if index is None:
            wf.connect(node, node_field, outputnode, field)
        else:
            wf.connect(node, node_field, bold_lists[field], f"in{index + 1}")
            if index == 0:  # the list to the output, once
                wf.connect(bold_lists[field], "out", outputnode, field)

    # SpatialReference: BIDS asks for it where the space label is not a standard one
    reference = spatial_reference(template, output_dir)

    def sink(name, source_file, node, field, metadata=None, **entities):
        if output_dir is None:
            return None
        ds = pe.Node(DerivativesDataSink(base_directory=str(output_dir), source_file=str(source_file),
                                         **entities), name=name, **SINK_NODE)
        uri = raw_source_uri(source_file)
        if metadata is not None and uri:  # provenance: the raw scan it was made from
            metadata = {**metadata, "Sources": [uri]}
        if metadata:
            ds.inputs.metadata = metadata
        wf.connect(node, field, ds, "in_file")
        return ds

    # the derivatives' Description (BIDS recommends one for a desc- entity)
    how = (f"flavour {Path(flavour).name if str(flavour).endswith('.json') else flavour}, "
           f"masking {masking}")
    anat_wf = None
    if anat_file is not None:
        # the mask binarised above, once for all the streams (and the QC)
        anat_wf = init_structural_wf(flavour=flavour, masking=masking, omp_nthreads=omp_nthreads,
                                     mask_model=mask_model, binarise_template_mask=False,
                                     name="anat_wf")
        anat_wf.inputs.inputnode.in_file = str(anat_file)
        wf.connect(inputnode, "template", anat_wf, "inputnode.template")
        wf.connect(*binary_mask, anat_wf, "inputnode.template_mask")
        out = "outputnode."
        output("anat_preproc", anat_wf, out + "out_file")
        output("anat_xfm", anat_wf, out + "composite_transform")
        sink("ds_anat", anat_file, anat_wf, out + "out_file", space=template_name, desc="preproc",
             metadata={"Description": f"bias-corrected (N4) and registered to {template_name} "
                                      f"with antsRegistration ({how})",
                       "SkullStripped": False,
                       "SpatialReference": reference})
        sink("ds_anat_xfm", anat_file, anat_wf, out + "composite_transform", from_="native",
             to=template_name, mode="image", suffix="xfm", extension=".h5")
        if masking != "none":
            output("anat_mask", anat_wf, out + "out_mask")
            sink("ds_anat_mask", anat_file, anat_wf, out + "out_mask", metadata=MASK_METADATA,
                 desc="brain", suffix="mask")
        if qc:
            write = _connect_qc(wf, anat_file, (anat_wf, out + "out_file"), "anat", label,
                                output_dir, "anat", template_name,
                                template_mask=binary_mask)
            output("anat_qc", write, "out_json")

    for index, (bold, meta) in enumerate(zip(bold_files, bold_metadata, strict=True)):
        times = meta.get("SliceTiming") if slice_timing else None
        try:
            func_wf = init_functional_wf(
                flavour=flavour, method=method, masking=masking, dummy_scans=dummy_scans,
                slice_timing=times, repetition_time=meta.get("RepetitionTime"),
                slice_encoding_direction=meta.get("SliceEncodingDirection", "k"),
                omp_nthreads=omp_nthreads, mask_model=mask_model,
                binarise_template_mask=False, name=f"func{index}_wf")
        except SamriMLError as err:  # its metadata: name the run
            raise SamriMLError(f"bold_files[{index}] {bold}: {err}") from None
        func_wf.inputs.inputnode.in_file = str(bold)
        wf.connect(inputnode, "template", func_wf, "inputnode.template")
        wf.connect(*binary_mask, func_wf, "inputnode.template_mask")
        if method in ("composite", "structural"):  # then there is a structural scan
            wf.connect(anat_wf, "outputnode.bias_corrected", func_wf, "inputnode.structural")
            wf.connect(anat_wf, "outputnode.composite_transform",
                       func_wf, "inputnode.structural_transform")
            if masking != "none":
                wf.connect(anat_wf, "outputnode.out_mask", func_wf, "inputnode.structural_mask")
        out = "outputnode."
        output("bold_preproc", func_wf, out + "out_file", index)
        # the sidecar: BIDS inheritance does not reach into a derivatives dataset
        kept, dropped = _kept_and_dropped(headers[bold], dummy_scans)
        short = dropped < dummy_scans and too_few_volumes_note(kept + dropped, dummy_scans,
                                                               "dummy_scans")
        if short:  # cut to its last volume: said here, not in the node's log only
            warnings.warn(f"bold_files[{index}] {bold}: {short}", SamriMLNote, stacklevel=2)
        corrected = times is not None and kept >= MIN_SLICE_TIMING_VOLUMES
        steps = ", ".join([f"{dropped} dummy volume(s) dropped"] * bool(dropped)
                          + ["slice-timing corrected"] * corrected)
        bold_meta = {"Description": f"{steps + ', ' if steps else ''}registered to "
                                    f"{template_name} with antsRegistration ({how}, "
                                    f"{method} method)",
                     "SkullStripped": False, "SliceTimingCorrected": corrected,
                     "SpatialReference": reference}
        if meta.get("RepetitionTime"):
            bold_meta["RepetitionTime"] = float(meta["RepetitionTime"])
            if corrected:  # slices are shifted to the middle of the repetition
                bold_meta["StartTime"] = float(meta["RepetitionTime"]) / 2
        if meta.get("TaskName"):
            bold_meta["TaskName"] = meta["TaskName"]
        bold_meta.update(_discarded_volumes(meta, dropped))
        sink(f"ds_func{index}", bold, func_wf, out + "out_file", metadata=bold_meta,
             space=template_name, desc="preproc")
        if method != "structural":
            # composite: the run's own transform goes to the structural scan (e.g. to-T2w)
            target = template_name if method == "functional" else (
                parse_entities(anat_file)["suffix"] or "anat")
            output("bold_xfm", func_wf, out + "composite_transform", index)
            sink(f"ds_func{index}_xfm", bold, func_wf, out + "composite_transform",
                 from_="native", to=target, mode="image", suffix="xfm", extension=".h5")
        if masking != "none":
            output("bold_mask", func_wf, out + "out_mask", index)
            sink(f"ds_func{index}_mask", bold, func_wf, out + "out_mask",
                 metadata=MASK_METADATA, desc="brain", suffix="mask")
        if qc:
            write = _connect_qc(wf, bold, (func_wf, out + "out_file"), "func", label,
                                output_dir, f"func{index}", template_name,
                                dummy_scans=dummy_scans,
                                template_mask=binary_mask)
            output("bold_qc", write, "out_json", index)
    _check_derivative_names(wf, anat_file, bold_files)
    return wf


def _check_bids_names(anat_file, bold_files) -> None:
    """Refuse a scan whose derivatives cannot be named (no ``sub-`` entity: not a BIDS
    name): its data sink failed at run time, once the registration was done."""
    named = [("anat_file", anat_file)] * (anat_file is not None) + [
        (f"bold_files[{index}]", path) for index, path in enumerate(bold_files)]
    for what, path in named:
        if not parse_entities(path).get("sub"):
            raise SamriMLError(f"{what} {path}: not a BIDS file name (no sub-<label> entity), "
                               "so its derivatives cannot be named; hint: name it as BIDS "
                               "does (sub-01_T2w.nii.gz), or build with output_dir=None")


def _check_derivative_names(wf, anat_file, bold_files) -> None:
    """Refuse scans whose derivatives would have one name (a ``bold`` and a ``cbv`` run of
    the same entities: the transform and QC files drop the suffix), one overwriting the
    other's in silence: one line naming both and a shared file, as built, before it runs."""
    from samri_ml.interfaces.bids import (
        SharedDerivativeNames,
        planned_derivatives,
        shared_derivatives,
    )

    clashes = shared_derivatives(planned_derivatives(wf))
    if not clashes:
        return
    names = {str(path): f"bold_files[{index}] {path}" for index, path in enumerate(bold_files)}
    if anat_file is not None:
        names[str(anat_file)] = f"anat_file {anat_file}"
    first, second, what, paths = clashes[0]
    more = f" (and {len(clashes) - 1} more such pair(s))" if len(clashes) > 1 else ""
    raise SharedDerivativeNames(
        f"{names.get(first, first)} and {names.get(second, second)} would write the same "
        f"{what} files, e.g. {Path(paths[0]).name}{more}; hint: give each its own output_dir",
        clashes)


def spatial_reference(template, output_dir) -> str:
    """The template as BIDS' ``SpatialReference`` wants it: a path relative to the derivatives
    folder where it lies inside it, else a ``file://`` URI (an absolute, unambiguous name)."""
    from pathlib import Path

    path = Path(template).resolve()
    if output_dir is not None and path.is_relative_to(Path(output_dir).resolve()):
        return path.relative_to(Path(output_dir).resolve()).as_posix()
    return path.as_uri()


def _connect_qc(wf, raw_file, processed, modality, label, output_dir, prefix, space=None,
                dummy_scans: int = 0, template_mask=None):
    """VCF and SCF of a registered scan against its raw input (a run's without the
    ``dummy_scans`` its processing dropped), and the fraction of the template's brain it covers
    (``template_mask``: node, field), written beside the derivatives
    (``space-<template>`` in their names: runs against two templates into one OUTPUT_DIR keep
    both); returns the node that writes the record."""
    from samri_ml.interfaces.qc import SmoothnessConservation, VolumeConservation, WriteQCMetrics

    raw = {"raw_file": str(raw_file), "raw_dummy_scans": int(dummy_scans)}
    vcf = pe.Node(VolumeConservation(**raw), name=f"{prefix}_vcf", mem_gb=1)
    scf = pe.Node(SmoothnessConservation(**raw), name=f"{prefix}_scf", mem_gb=2)
    write = pe.Node(WriteQCMetrics(scan=Path(str(raw_file)).name, modality=modality,
                                   workflow=label), name=f"{prefix}_qc")
    wf.connect([
        (processed[0], vcf, [(processed[1], "processed_file")]),
        (processed[0], scf, [(processed[1], "processed_file")]),
        (vcf, scf, [("vcf", "vcf")]),
        (vcf, write, [("vcf", "vcf"), ("volume_processed", "volume_processed"),
                      ("volume_raw", "volume_raw"), ("raw_dummy_scans", "raw_dummy_scans")]),
        (scf, write, [("scf", "scf"), ("scf_normalised", "scf_normalised"),
                      ("fwhm_processed", "fwhm_processed"), ("fwhm_raw", "fwhm_raw"),
                      ("scf_axes_left_out", "scf_axes_left_out")]),
    ])
    if template_mask is not None:  # a node's output: the file need not exist when it is built
        wf.connect(*template_mask, vcf, "reference_mask")
        wf.connect(vcf, "brain_coverage", write, "brain_coverage")
    if output_dir is not None:
        # the table's desc is not the record's: BIDS read the record as its sidecar
        for ext, field, desc in ((".json", "out_json", "qc"), (".tsv", "out_tsv", "qctable")):
            ds = pe.Node(DerivativesDataSink(base_directory=str(output_dir),
                                             source_file=str(raw_file), desc=desc,
                                             suffix="metrics", extension=ext,
                                             **({"space": space} if space else {})),
                         name=f"ds_{prefix}_qc{ext[1:]}", **SINK_NODE)
            wf.connect(write, field, ds, "in_file")
    return write


def raw_discarded(meta: dict) -> tuple[int | None, int | None]:
    """The volumes a raw run's sidecar says were discarded before its file was written, by
    the user and by the scanner (BIDS' ``NumberOfVolumesDiscardedByUser``/``ByScanner``);
    None for one missing or no whole number of 0 or more."""
    from samri_ml.workflows.registration import _whole

    return tuple(meta.get(key) if _whole(meta.get(key)) and meta[key] >= 0 else None
                 for key in ("NumberOfVolumesDiscardedByUser",
                             "NumberOfVolumesDiscardedByScanner"))


def _discarded_volumes(meta: dict, dummy_scans: int) -> dict:
    """BIDS' counts of the volumes a derivative run lacks at its start: the dummy scans dropped
    here (``dummy_scans``, :func:`_kept_and_dropped`) added to those the user dropped before
    (``NumberOfVolumesDiscardedByUser``), the scanner's as the raw sidecar gives them. Without
    them, onsets taken from the raw ``events.tsv`` were ``dummy_scans`` repetitions off on the
    derivative, unsaid."""
    user, scanner = raw_discarded(meta)
    out = {}
    by_user = (user or 0) + int(dummy_scans)
    if by_user or user is not None:
        out["NumberOfVolumesDiscardedByUser"] = by_user
    if scanner is not None:
        out["NumberOfVolumesDiscardedByScanner"] = scanner
    return out


def _check_run_metadata(index: int, bold: str, meta, slice_timing: bool, img=None) -> dict:
    """Run ``index``'s ``bold_metadata`` entry, checked by the rules ``samri_ml-register``
    checks a run's sidecar by (:mod:`samri_ml.func`), before anything is built: a string
    ``RepetitionTime`` ("1.0") or a ``SliceEncodingDirection`` 'z' was a Nipype TraitError
    traceback, a repetition time in milliseconds was written into the outputs, and
    ``SliceTiming`` of another count than the run's slices failed in its node, after N4 and
    more had run. Returns the entry (a copy, where it changes): without
    ``SliceEncodingDirection``, the NIfTI header's slice axis where it gives one (said in a
    note, as the command says it; the third axis was taken whatever the header said); empty
    ``SliceTiming`` dropped (no slice times: not corrected; it failed in the node). ``img``:
    the run's image as :func:`_header_of` opens it; None (unreadable) and its slices are not
    counted."""
    where = f"bold_metadata[{index}]"

    def refuse(why):
        raise SamriMLError(f"bold_files[{index}] {bold}: {why}")

    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        refuse(f"{where} {meta!r} is not a dict; hint: give one dict per run, its sidecar's "
               "fields (RepetitionTime, SliceTiming, ...)")
    tr = meta.get("RepetitionTime")
    if tr is not None and not is_repetition_time(tr):
        refuse(f"RepetitionTime {tr!r} in {where} is not a number of seconds above 0; hint: "
               "a number, 1.5, not \"1.5\"")
    if tr is not None and tr > MAX_TR_SECONDS:
        refuse(f"RepetitionTime {tr:g} s in {where} is over {MAX_TR_SECONDS:g} s: "
               f"milliseconds? hint: give it in seconds ({tr / 1000:g} for {tr:g} ms)")
    times = meta.get("SliceTiming")
    if not slice_timing or times is None:
        return dict(meta)
    if not is_slice_timing(times):
        refuse(f"SliceTiming in {where} is not a list of numbers (the time in seconds of each "
               "slice); hint: fix it, or build with slice_timing=False")
    if not len(times):
        return {key: value for key, value in meta.items() if key != "SliceTiming"}
    if tr is None:
        refuse(f"SliceTiming but no RepetitionTime in {where}; hint: add RepetitionTime (in "
               "seconds), or build with slice_timing=False")
    meta = dict(meta)
    header_axis = None if img is None else header_slice_axis(img)
    if meta.get("SliceEncodingDirection") is None and header_axis not in (None, 2):
        meta["SliceEncodingDirection"] = "ijk"[header_axis]
        warnings.warn(f"bold_files[{index}] {bold}: no SliceEncodingDirection in {where}; "
                      f"using the NIfTI header's slice axis (slice_dim), {'ijk'[header_axis]}",
                      SamriMLNote, stacklevel=3)
    direction = meta.get("SliceEncodingDirection", "k")
    axis = slice_axis(direction)
    if axis is None:
        refuse(f"SliceEncodingDirection {direction!r} in {where} is not one of "
               f"{', '.join(SLICE_ENCODING_DIRECTIONS)}; hint: fix it, or build with "
               "slice_timing=False")
    if img is not None and len(img.shape) > axis and len(times) != img.shape[axis]:
        refuse(f"{where} gives {len(times)} SliceTiming values for {img.shape[axis]} slices "
               f"along axis {axis} (SliceEncodingDirection {direction}); hint: fix it, or "
               "build with slice_timing=False")
    return meta


def _check_dimensions(anat_file, bold_files, headers: dict) -> None:
    """The scans' dimensions, from their headers (``headers``: path -> :func:`_header_of`)
    where they can be read, refused as ``samri_ml-register`` refuses them: a 4D
    ``anat_file`` or a 3D run was taken (a 3D image was registered and written as a run, or
    failed in its slice-timing step)."""
    img = None if anat_file is None else headers[anat_file]
    shape = None if img is None else tuple(img.shape)
    if shape and len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise SamriMLError(f"anat_file {anat_file}: structural scan of {shape[3]} volumes "
                           f"{shape}; expected one 3D volume; hint: average its volumes or "
                           "keep one (e.g. nibabel: nb.funcs.four_to_three(img)[0])")
    for index, bold in enumerate(bold_files):
        img = headers[bold]
        shape = None if img is None else tuple(img.shape)
        if shape and (len(shape) < 4 or shape[3] < 2 or any(n > 1 for n in shape[4:])):
            raise SamriMLError(f"bold_files[{index}] {bold}: functional run of shape {shape}; "
                               "expected a 4D time series of 2 volumes or more")


def _header_of(path):
    """The image at ``path`` as nibabel opens it (its header read, not its data), or None
    where it cannot be read (a path not written yet, a stand-in of samri_ml-graph). What
    nibabel fixed in the header is said as samri_ml says it (:func:`samri_ml.io.load_nifti`):
    a run's negative pixdim came as nibabel's raw log line alone."""
    import nibabel as nb

    from samri_ml.io import _nibabel_log, _say_header_fixes

    try:
        with _nibabel_log() as fixed:
            img = nb.load(str(path))
    except Exception:  # noqa: BLE001 - the workflow's first node says what is wrong with it
        return None
    _say_header_fixes(img, path, fixed)
    return img


def _kept_and_dropped(img, dummy_scans: int) -> tuple[int, int]:
    """The volumes of a run left after its dummy scans (slice timing needs
    :data:`~samri_ml.func.MIN_SLICE_TIMING_VOLUMES`), and the dummy volumes its workflow drops
    (``dummy_scans`` clamped as :func:`~samri_ml.func.n_dummy_to_drop` clamps them: a run of 5
    volumes under ``--dummy-scans 10`` loses 4, and its sidecar said 10). ``img``: the run as
    :func:`_header_of` opens it; None, a file that cannot be read (a stand-in of
    samri_ml-graph, a path not written yet), counts as long enough, ``dummy_scans`` dropped
    (the workflow is then only drawn, or fails in its first node)."""
    from samri_ml.func import n_dummy_to_drop

    if img is None:
        return MIN_SLICE_TIMING_VOLUMES, int(dummy_scans)
    shape = img.shape
    n = shape[3] if len(shape) > 3 else 1
    dropped = n_dummy_to_drop(n, dummy_scans)
    return n - dropped, dropped


def _check_inputs(bold_files, bold_metadata, anat_file, qc: bool) -> tuple[list, list | None]:
    """The files given to :func:`init_generic_wf`, checked where it is called: a single path
    as ``bold_files`` was split into its characters, and a metadata list of another length
    failed inside a QC node (``raw_file '/'``) the user never made. The QC nodes take the scans
    as they are built, so with ``qc`` a missing scan is named here too (without, the files are
    Nipype's to check when the workflow runs). Returns both as lists: an iterator given (a
    ``Path.glob``) was used up here, and the workflow was built without the runs."""
    from pathlib import Path

    if isinstance(bold_files, (str, Path)):
        raise SamriMLError(f"bold_files {str(bold_files)!r}: a single path, expected a list of "
                           f"runs; hint: bold_files=[{str(bold_files)!r}]")
    bold_files = list(bold_files)
    if bold_metadata is not None and not isinstance(bold_metadata, dict):
        bold_metadata = list(bold_metadata)
    if bold_metadata and (isinstance(bold_metadata, dict)
                          or len(bold_metadata) != len(bold_files)):
        given = 1 if isinstance(bold_metadata, dict) else len(bold_metadata)
        raise SamriMLError(f"bold_metadata: {given} entr(ies) for {len(bold_files)} run(s); "
                           "hint: give one dict per run, in the order of bold_files")
    if qc:
        named = [("anat_file", anat_file)] if anat_file is not None else []
        for what, path in named + [(f"bold_files[{i}]", f) for i, f in enumerate(bold_files)]:
            if not Path(path).is_file():
                raise SamriMLError(f"{what} {str(path)!r}: no such file; hint: check the path, "
                                   "or build with qc=False to connect scans that do not exist yet")
    return bold_files, bold_metadata
