"""SAMRI's generic registration workflow, as Nipype workflow factories.

``init_structural_wf``  N4 bias correction -> antsRegistration to the template (template mask
                        as fixed-image mask; phases s_translation, similarity, affine, syn) ->
                        antsApplyTransforms.
``init_functional_wf``  drop dummy volumes -> slice timing correction (optional) -> temporal
                        mean -> N4 -> antsRegistration of the mean (to the bias-corrected
                        structural scan, ``composite``; or straight to the template,
                        ``functional``) -> transforms merged -> antsApplyTransforms on the 4D run.
``init_generic_wf``     both streams for one subject/session, with QC and BIDS-Derivatives
                        sinks; this is what ``samri_ml-register`` runs.

Every stream has a mask slot (``masking='input'`` takes ``inputnode.in_mask``; ``'unet'``
inserts the U-Net :class:`~samri_ml.interfaces.MaskBrain` node). ``default`` and ``fast`` then
run their linear phases brain to brain (:func:`samri_ml.registration.brain_phases`): the
bias-corrected scan times its mask against the template times its own (``s_register_brain``),
and SyN on the whole images from there (``s_register``, the mask on the moving side, grown);
the transform found is applied to the whole scan. ``samri`` keeps the seed paper's "Generic
Masked" workflow: the mask as antsRegistration's moving-image mask on every stage
(:func:`samri_ml.registration.moving_mask_stages`) and as the N4 mask; ``default`` and
``fast`` fit N4 on the whole image (:func:`samri_ml.registration.n4_uses_mask`).
"""

from __future__ import annotations

import numbers
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from samri_ml.errors import SamriMLError
from samri_ml.interfaces._paths import IdentityInterface
from samri_ml.interfaces.ants import ApplyTransforms, N4BiasFieldCorrection, Registration
from samri_ml.interfaces.func import DropDummyScans, SliceTimeCorrection, TemporalMean
from samri_ml.registration import (
    brain_fixed_mask_dilation,
    brain_phases,
    mask_dilation,
    moving_mask_stages,
    n4_inputs,
    n4_uses_mask,
    registration_inputs,
    stream_phases,
)

METHODS = ("composite", "structural", "functional")
MASKING = ("none", "unet", "input")


def _whole(value) -> bool:
    """A whole number (numpy's too; not a bool: numpy's is no ``Integral``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(method=None, masking=None, omp_nthreads=None, dummy_scans=None, mask_model=None):
    if dummy_scans is not None and (not _whole(dummy_scans) or dummy_scans < 0):
        # -1 failed in a QC node the user never made, or was taken as 0 without a word
        raise SamriMLError(f"dummy_scans {dummy_scans!r}: must be a whole number, at least 0")
    if omp_nthreads is not None and (not _whole(omp_nthreads) or omp_nthreads < 1):
        # -1 reached the U-Net node, where TensorFlow's failed check aborted the process
        raise SamriMLError(f"omp_nthreads {omp_nthreads!r}: must be a whole number, at least 1")
    if method is not None and method not in METHODS:
        raise SamriMLError(f"unknown registration method {method!r}; one of {', '.join(METHODS)}")
    if masking is not None and masking not in MASKING:
        raise SamriMLError(f"unknown masking {masking!r}; one of {', '.join(MASKING)}")
    if mask_model is not None and masking != "unet":
        # left unused without a word (samri_ml-register refuses --mask-model so)
        raise SamriMLError(f"mask_model {str(mask_model)!r} needs masking='unet' (it is the "
                           f"U-Net that predicts the masks; masking is {masking!r})")
    if mask_model is not None and not Path(mask_model).is_file():
        # a Traits error traceback on the mask node's 'model' trait
        raise SamriMLError(f"mask_model {str(mask_model)!r}: model file not found; hint: give "
                           "the path of a .keras file (samri_ml-train-masker writes one)")


def _ants_reachable() -> None:
    """The ANTs programs on ``PATH`` for Nipype's interfaces (:func:`samri_ml.ants.
    ensure_ants_on_path`): a workflow built from Python, with the virtual environment not
    activated, failed with ``No command "N4BiasFieldCorrection" found``."""
    from samri_ml.ants import ensure_ants_on_path

    try:
        ensure_ants_on_path()
    except RuntimeError:  # no ANTs at all: the first ANTs step says so when it runs
        pass


def _ants(interface, **inputs):
    """A Nipype ANTs ``interface`` (class) that runs its program by the path
    :func:`samri_ml.ants.program` gives: a cluster job without the submitting shell's ``PATH``
    found no ``N4BiasFieldCorrection`` by name (the program is not part of the node's hash)."""
    from samri_ml.ants import program

    return interface(command=program(interface._cmd), **inputs)


def _registration_node(name, flavour, stream, omp_nthreads, mem_gb=2, phases=None):
    reg = pe.Node(_ants(Registration, **registration_inputs(flavour, stream, phases)),
                  name=name, n_procs=omp_nthreads, mem_gb=mem_gb)
    reg.inputs.num_threads = omp_nthreads
    reg.inputs.output_transform_prefix = "xfm_"
    reg.inputs.output_warped_image = False
    return reg


def _replicate(in_file, use, dilation=0):
    """One mask entry per registration stage (antsRegistration's ``--masks`` per stage): the
    mask (grown by ``dilation`` voxels, written into the node's folder) where ``use`` is true,
    ``"NULL"`` (no mask) elsewhere."""
    if dilation:
        import os

        from samri_ml.registration import dilate_mask_file

        in_file = dilate_mask_file(in_file, dilation, os.getcwd())
    return [in_file if u else "NULL" for u in use]


def _restore_time_header(in_file, reference, repetition_time=None):
    """Give a resampled 4D run the repetition time (``pixdim[4]``) and time unit that
    antsApplyTransforms drops (it writes 1.0): ``repetition_time`` where given (the sidecar's
    ``RepetitionTime``), else the reference's own."""
    import os

    import nibabel as nb
    import numpy as np

    img = nb.load(in_file)
    ref = nb.load(reference)
    zooms = list(img.header.get_zooms())
    ref_zooms = ref.header.get_zooms()
    if len(zooms) < 4:
        return in_file
    tr = float(repetition_time) if repetition_time else (
        float(ref_zooms[3]) if len(ref_zooms) > 3 else zooms[3])
    xyz_unit = img.header.get_xyzt_units()[0]
    t_unit = "sec" if repetition_time else ref.header.get_xyzt_units()[1]
    if zooms[3] == tr and img.header.get_xyzt_units()[1] == t_unit:
        return in_file
    header = img.header.copy()
    zooms[3] = tr
    header.set_zooms(zooms)
    header.set_xyzt_units(xyz_unit, t_unit)
    name = os.path.basename(in_file)
    out = os.path.join(os.getcwd(), name.replace(".nii", "_tr.nii", 1))
    nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine, header).to_filename(out)
    return out


def _mask_list_node(name, flavour, stream, phases, moving=False, subject_mask=None,
                    dilation=None):
    """Per-stage mask list for antsRegistration's ``phases`` of a stream. ``subject_mask``
    (default: ``moving``) says the mask is the subject's own brain mask, grown by the flavour's
    ``moving_mask_dilation``; the template's mask is used as given. ``dilation`` overrides
    both."""
    node = pe.Node(niu.Function(function=_replicate, input_names=["in_file", "use", "dilation"],
                                output_names=["out"]), name=name, run_without_submitting=True)
    node.inputs.use = (moving_mask_stages(flavour, stream, phases) if moving
                       else [True] * len(phases))
    if dilation is None:
        subject_mask = moving if subject_mask is None else subject_mask
        dilation = mask_dilation(flavour) if subject_mask else 0
    node.inputs.dilation = dilation
    return node


def _binary_mask(in_file):
    """The template's mask as :func:`samri_ml.masks.binary_mask_file` makes it (itself where
    it is 0/1 already), written into the node's folder."""
    import os

    from samri_ml.masks import binary_mask_file

    return binary_mask_file(in_file, os.getcwd())


def _template_binary_mask(wf, source):
    """Node ``template_binary_mask`` of ``wf``, the template's mask from ``source`` (node,
    field) above 0.5 (:data:`samri_ml.masks.MASK_LEVEL`), as the registration takes it; returns
    ``(node, field)``. antsRegistration reads a mask as 8-bit integers: a soft mask's values
    below 1 were outside (a mask of 0.99 at most was empty, the scan left unregistered)."""
    node = pe.Node(niu.Function(function=_binary_mask, input_names=["in_file"],
                                output_names=["out_file"]),
                   name="template_binary_mask", run_without_submitting=True)
    wf.connect(*source, node, "in_file")
    return node, "out_file"


def _template_mask(wf, inputnode, binarise: bool):
    """The template's mask of a stream (``inputnode.template_mask``) as its registration takes
    it: through :func:`_template_binary_mask` where ``binarise``, else as given (0/1 already:
    init_generic_wf's own node made it so, and a second node per stream read it again)."""
    source = (inputnode, "template_mask")
    return _template_binary_mask(wf, source) if binarise else source


def _brain(in_file, mask_file):
    """The image times its brain mask, written into the node's folder."""
    import os

    from samri_ml.registration import masked_image_file

    return masked_image_file(in_file, mask_file, os.getcwd())


def _brain_node(name):
    return pe.Node(niu.Function(function=_brain, input_names=["in_file", "mask_file"],
                                output_names=["out_file"]), name=name)


def _registration(wf, *, flavour, stream, prefix, omp_nthreads, fixed, moving, fixed_mask=None,
                  moving_mask=None, fixed_is_subject=False):
    """The antsRegistration of a stream, wired; returns the node whose ``composite_transform``
    is the stream's transform (``<prefix>_register``).

    ``fixed``, ``moving``, ``fixed_mask`` and ``moving_mask`` are ``(node, field)`` pairs (the
    masks None where there are none). Where both masks are given, the flavour's brain phases
    (:func:`samri_ml.registration.brain_phases`) run first on both images times their masks
    (nodes ``<prefix>_brain``, ``<prefix>_fixed_brain``, ``<prefix>_register_brain``), the fixed
    mask grown as the only mask. The other phases run on the whole images (from that transform,
    where there was one), with the fixed mask on every stage (grown by the flavour's
    ``moving_mask_dilation`` when it is a subject's mask, ``fixed_is_subject``) and the moving
    mask on the stages the flavour names.
    """
    phases = stream_phases(flavour, stream)
    brain = brain_phases(flavour, stream) if None not in (fixed_mask, moving_mask) else []
    rest = phases[len(brain):]
    name = f"{prefix}_register"
    if brain:
        reg_brain = _registration_node(f"{name}_brain" if rest else name, flavour, stream,
                                       omp_nthreads, phases=brain)
        fixed_brain = _brain_node(f"{prefix}_fixed_brain")
        moving_brain = _brain_node(f"{prefix}_brain")
        brain_masks = _mask_list_node(f"{prefix}_fixed_brain_masks", flavour, stream, brain,
                                      dilation=brain_fixed_mask_dilation(flavour))
        wf.connect([
            (fixed[0], fixed_brain, [(fixed[1], "in_file")]),
            (fixed_mask[0], fixed_brain, [(fixed_mask[1], "mask_file")]),
            (moving[0], moving_brain, [(moving[1], "in_file")]),
            (moving_mask[0], moving_brain, [(moving_mask[1], "mask_file")]),
            (fixed_brain, reg_brain, [("out_file", "fixed_image")]),
            (moving_brain, reg_brain, [("out_file", "moving_image")]),
            (fixed_mask[0], brain_masks, [(fixed_mask[1], "in_file")]),
            (brain_masks, reg_brain, [("out", "fixed_image_masks")]),
        ])
        if not rest:
            return reg_brain
    register = _registration_node(name, flavour, stream, omp_nthreads, phases=rest)
    wf.connect([(fixed[0], register, [(fixed[1], "fixed_image")]),
                (moving[0], register, [(moving[1], "moving_image")])])
    if brain:
        wf.connect(reg_brain, "composite_transform", register, "initial_moving_transform")
    if fixed_mask is not None:
        fixed_masks = _mask_list_node(f"{prefix}_fixed_masks", flavour, stream, rest,
                                      subject_mask=fixed_is_subject)
        wf.connect([(fixed_mask[0], fixed_masks, [(fixed_mask[1], "in_file")]),
                    (fixed_masks, register, [("out", "fixed_image_masks")])])
    if moving_mask is not None:
        moving_masks = _mask_list_node(f"{prefix}_moving_masks", flavour, stream, rest,
                                       moving=True)
        wf.connect([(moving_mask[0], moving_masks, [(moving_mask[1], "in_file")]),
                    (moving_masks, register, [("out", "moving_image_masks")])])
    return register


def _n4_node(name, flavour, stream, omp_nthreads):
    n4 = pe.Node(_ants(N4BiasFieldCorrection, dimension=3, copy_header=True,
                       **n4_inputs(flavour, stream)), name=name, n_procs=omp_nthreads, mem_gb=1)
    n4.inputs.num_threads = omp_nthreads
    return n4


def _given_mask(in_mask=None):
    """The mask of ``masking='input'`` as given; a one-line error where none was (nothing
    connected to, or set on, ``inputnode.in_mask``)."""
    if in_mask is None:
        from samri_ml.errors import SamriMLError

        raise SamriMLError("masking='input' but no mask was given (inputnode.in_mask is neither "
                           "connected nor set); hint: connect your mask to inputnode.in_mask "
                           "(or set wf.inputs.inputnode.in_mask), or use masking='unet' or "
                           "'none'")
    return in_mask


def _mask_source(workflow, masking, inputnode, image_source, prefix, omp_nthreads=1,
                 mask_model=None):
    """Return ``(node, field)`` giving the brain mask of a stream, or None without masking.
    The U-Net node runs on ``omp_nthreads`` threads, which MultiProc reserves for it, with
    ``mask_model`` (a ``.keras`` file; None: the shipped U-Net)."""
    if masking == "none":
        return None
    if masking == "input":
        # a mask nobody gave failed late, in a mask node, with "TypeError: _replicate() missing
        # 1 required positional argument": this node says what is missing instead
        given = pe.Node(niu.Function(function=_given_mask, input_names=["in_mask"],
                                     output_names=["out_mask"]),
                        name=f"{prefix}_in_mask", run_without_submitting=True)
        workflow.connect(inputnode, "in_mask", given, "in_mask")
        return given, "out_mask"
    from samri_ml.interfaces.masking import MaskBrain

    mask = pe.Node(MaskBrain(num_threads=omp_nthreads), name=f"{prefix}_mask", mem_gb=2)
    if mask_model:
        mask.inputs.model = str(Path(mask_model).absolute())
    workflow.connect([(image_source[0], mask, [(image_source[1], "in_file")])])
    return mask, "out_mask"


def init_structural_wf(*, flavour: str = "default", masking: str = "none", omp_nthreads: int = 1,
                       mask_model: str | None = None, binarise_template_mask: bool = True,
                       name: str = "structural_wf"):
    """Structural stream: bias correction and registration to a template.

    Parameters
    ----------
    flavour : str
        Registration flavour (``default``, ``fast``, ``samri`` or a JSON path).
    masking : str
        ``none``, ``input`` (``inputnode.in_mask``) or ``unet`` (predict the mask).
    omp_nthreads : int
        Threads for ANTs.
    mask_model : str or None
        The U-Net of ``masking='unet'`` (a ``.keras`` file, e.g. one fine-tuned with
        ``samri_ml-train-masker --scans``); None: the shipped one.
    binarise_template_mask : bool
        Take ``inputnode.template_mask`` above 0.5 (node ``template_binary_mask``); False:
        it is a 0/1 mask already, used as given (init_generic_wf binarises it once for all
        its streams).

    Inputs
    ------
    in_file : the structural scan (native space)
    template, template_mask : the template and its brain mask (a soft mask, of other values
        than 0 and 1, is taken above 0.5: node ``template_binary_mask``)
    in_mask : brain mask of ``in_file`` (used when ``masking='input'``)

    Outputs
    -------
    out_file : the bias-corrected scan in template space
    bias_corrected : the bias-corrected scan in native space
    composite_transform, inverse_composite_transform : native <-> template (``.h5``)
    out_mask : the brain mask used (``masking`` other than ``none``)
    """
    _check(masking=masking, omp_nthreads=omp_nthreads, mask_model=mask_model)
    _ants_reachable()
    wf = pe.Workflow(name=name)
    # relative paths set on it are made absolute there: the nodes run in folders of their own
    inputnode = pe.Node(IdentityInterface(["in_file", "template", "template_mask", "in_mask"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        ["out_file", "bias_corrected", "composite_transform", "inverse_composite_transform",
         "out_mask"]), name="outputnode")
    biascorrect = _n4_node("s_biascorrect", flavour, "structural", omp_nthreads)
    warp = pe.Node(_ants(ApplyTransforms, interpolation="BSpline", float=True, dimension=3),
                   name="s_warp", n_procs=omp_nthreads, mem_gb=1)
    warp.inputs.num_threads = omp_nthreads
    wf.connect([
        (inputnode, biascorrect, [("in_file", "input_image")]),
        (biascorrect, warp, [("output_image", "input_image")]),
        (inputnode, warp, [("template", "reference_image")]),
        (warp, outputnode, [("output_image", "out_file")]),
        (biascorrect, outputnode, [("output_image", "bias_corrected")]),
    ])
    mask = _mask_source(wf, masking, inputnode, (inputnode, "in_file"), "s", omp_nthreads,
                        mask_model)
    register = _registration(wf, flavour=flavour, stream="structural", prefix="s",
                             omp_nthreads=omp_nthreads, fixed=(inputnode, "template"),
                             moving=(biascorrect, "output_image"),
                             fixed_mask=_template_mask(wf, inputnode, binarise_template_mask),
                             moving_mask=mask)
    wf.connect([
        (register, warp, [("composite_transform", "transforms")]),
        (register, outputnode, [("composite_transform", "composite_transform"),
                                ("inverse_composite_transform", "inverse_composite_transform")]),
    ])
    if mask is not None:
        if n4_uses_mask(flavour):
            wf.connect(mask[0], mask[1], biascorrect, "mask_image")
        wf.connect(mask[0], mask[1], outputnode, "out_mask")
    return wf


def init_functional_wf(*, flavour: str = "default", method: str = "composite",
                       masking: str = "none", dummy_scans: int = 10, slice_timing=None,
                       repetition_time: float | None = None,
                       slice_encoding_direction: str = "k", omp_nthreads: int = 1,
                       mask_model: str | None = None, binarise_template_mask: bool = True,
                       name: str = "functional_wf"):
    """Functional stream: a 4D run into template space.

    Parameters
    ----------
    flavour : str
        Registration flavour.
    method : str
        ``composite`` (mean -> structural with f_translation, then the structural transform),
        ``structural`` (the structural transform only; the run is assumed aligned in scanner
        space with the structural scan) or ``functional`` (mean straight to the template with
        f_only_translation, similarity, affine, syn).
    masking : str
        ``none``, ``input`` or ``unet`` (mask of the temporal mean).
    mask_model : str or None
        The U-Net of ``masking='unet'`` (None: the shipped one).
    dummy_scans : int
        Volumes dropped at the start (clamped so that one is left).
    slice_timing : list of float or None
        Acquisition time of each slice (the sidecar's ``SliceTiming``); None skips slice timing
        correction.
    repetition_time : float
        Needed with ``slice_timing``.
    binarise_template_mask : bool
        As :func:`init_structural_wf`'s (used by ``method='functional'``).

    Inputs
    ------
    in_file : the 4D run
    template, template_mask : the template and its mask (taken above 0.5, as
        :func:`init_structural_wf` takes it)
    structural : the bias-corrected structural scan (``composite``)
    structural_transform : structural -> template composite transform (``composite``,
        ``structural``)
    structural_mask : brain mask of the structural scan (``composite`` with masking)
    in_mask : mask of the run's temporal mean (``masking='input'``)

    Outputs
    -------
    out_file : the 4D run in template space
    out_mean : its temporal mean (native space, bias corrected)
    transforms : the list of transforms applied (antsApplyTransforms order)
    composite_transform : the run's own registration (to the structural scan or the template)
    out_mask : the mask used
    """
    _check(method=method, masking=masking, omp_nthreads=omp_nthreads, dummy_scans=dummy_scans,
           mask_model=mask_model)
    _ants_reachable()
    from samri_ml.func import (
        SLICE_ENCODING_DIRECTIONS,
        check_slice_times,
        is_repetition_time,
        is_slice_timing,
        slice_axis,
    )

    if repetition_time is not None and not is_repetition_time(repetition_time):
        # "1.0" was a Traits error traceback on the slice-timing node's repetition_time
        raise SamriMLError(f"repetition_time {repetition_time!r}: not a number of seconds "
                           "above 0; hint: a number, 1.5, not \"1.5\"")
    if slice_timing is not None and not repetition_time:
        raise SamriMLError("slice timing correction needs the repetition time")
    if slice_timing is not None and not is_slice_timing(slice_timing):
        raise SamriMLError(f"slice_timing {slice_timing!r}: not a list of numbers (the time "
                           "in seconds of each slice)")
    if slice_timing is not None and slice_axis(slice_encoding_direction) is None:
        raise SamriMLError(f"slice_encoding_direction {slice_encoding_direction!r}: not one of "
                           f"{', '.join(SLICE_ENCODING_DIRECTIONS)}")
    if slice_timing is not None:  # (its repetition time a number above 0, checked above)
        try:  # here, not in the node after the workflow has started
            check_slice_times(slice_timing, repetition_time)
        except ValueError as err:
            raise SamriMLError(f"slice_timing: {err}") from None
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(  # relative paths made absolute, as above
        ["in_file", "template", "template_mask", "structural", "structural_transform",
         "structural_mask", "in_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        ["out_file", "out_mean", "transforms", "composite_transform", "out_mask"]),
        name="outputnode")
    dummy = pe.Node(DropDummyScans(dummy_scans=dummy_scans), name="f_dummy")
    wf.connect(inputnode, "in_file", dummy, "in_file")
    series = (dummy, "out_file")
    if slice_timing is not None:
        stc = pe.Node(SliceTimeCorrection(slice_timing=list(slice_timing),
                                          repetition_time=repetition_time,
                                          slice_encoding_direction=slice_encoding_direction),
                      name="f_stc")
        wf.connect(dummy, "out_file", stc, "in_file")
        series = (stc, "out_file")
    mean = pe.Node(TemporalMean(), name="f_mean")
    biascorrect = _n4_node("f_biascorrect", flavour, "functional", omp_nthreads)
    warp = pe.Node(_ants(ApplyTransforms, interpolation="BSpline", float=True, dimension=3,
                         input_image_type=3), name="f_warp",
                   n_procs=omp_nthreads, mem_gb=2)
    warp.inputs.num_threads = omp_nthreads
    merge = pe.Node(niu.Merge(2), name="f_merge", run_without_submitting=True)
    # antsApplyTransforms writes 1.0 as the 4th voxel size: put the repetition time back
    set_tr = pe.Node(niu.Function(function=_restore_time_header,
                                  input_names=["in_file", "reference", "repetition_time"],
                                  output_names=["out_file"]), name="f_set_tr")
    if repetition_time:
        set_tr.inputs.repetition_time = float(repetition_time)
    wf.connect([
        (series[0], mean, [(series[1], "in_file")]),
        (mean, biascorrect, [("out_file", "input_image")]),
        (series[0], warp, [(series[1], "input_image")]),
        (inputnode, warp, [("template", "reference_image")]),
        (merge, warp, [("out", "transforms")]),
        (warp, set_tr, [("output_image", "in_file")]),
        (series[0], set_tr, [(series[1], "reference")]),
        (set_tr, outputnode, [("out_file", "out_file")]),
        (biascorrect, outputnode, [("output_image", "out_mean")]),
        (merge, outputnode, [("out", "transforms")]),
    ])
    mask = _mask_source(wf, masking, inputnode, (mean, "out_file"), "f", omp_nthreads,
                        mask_model)
    if method == "composite":
        stream = "functional_to_structural"
        # a moving-image mask needs a fixed-image mask: here the structural scan's, with
        # masking only (the template's mask does not fit the structural scan)
        register = _registration(
            wf, flavour=flavour, stream=stream, prefix="f", omp_nthreads=omp_nthreads,
            fixed=(inputnode, "structural"), moving=(biascorrect, "output_image"),
            fixed_mask=None if mask is None else (inputnode, "structural_mask"),
            moving_mask=mask, fixed_is_subject=True)
        wf.connect([
            (inputnode, merge, [("structural_transform", "in1")]),
            (register, merge, [("composite_transform", "in2")]),
        ])
    elif method == "functional":
        stream = "functional_to_template"
        register = _registration(
            wf, flavour=flavour, stream=stream, prefix="f", omp_nthreads=omp_nthreads,
            fixed=(inputnode, "template"), moving=(biascorrect, "output_image"),
            fixed_mask=_template_mask(wf, inputnode, binarise_template_mask),
            moving_mask=mask)
        wf.connect(register, "composite_transform", merge, "in1")
    else:
        register = None
        wf.connect(inputnode, "structural_transform", merge, "in1")
    if register is not None:
        wf.connect(register, "composite_transform", outputnode, "composite_transform")
    if mask is not None:
        if n4_uses_mask(flavour):
            wf.connect(mask[0], mask[1], biascorrect, "mask_image")
        wf.connect(mask[0], mask[1], outputnode, "out_mask")
    return wf
