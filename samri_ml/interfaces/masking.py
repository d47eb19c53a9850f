"""Nipype interface of the U-Net brain masker (the seed's masking node).

The work is done by :func:`samri_ml.masking.predict.predict_mask`; TensorFlow is imported only when
the node runs.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    TraitedSpec,
    traits,
)
from nipype.interfaces.base import isdefined as traits_defined

from samri_ml.interfaces._base import SimpleInterface
from samri_ml.interfaces._paths import File, InFileKeyedInputSpec
from samri_ml.masking.predict import MIN_MAX_SLICES


class _MaskBrainInputSpec(InFileKeyedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D image, or 4D series (its temporal mean "
                   "is masked), in any orientation")  # fmt: skip
    model = File(exists=True, desc="Keras model file (default: the shipped masker, two U-Nets "
                 "averaged)")
    threshold = traits.Range(low=0.0, high=1.0, value=0.5, usedefault=True, exclude_low=True,
                             exclude_high=True,
                             desc="probability above which a voxel is brain (0 < t < 1, as "
                             "samri_ml-mask --threshold)")  # fmt: skip
    # a Range: 3 was taken when set and refused only when the node ran, after upstream work
    max_slices = traits.Range(low=MIN_MAX_SLICES, desc="predict at most this many slices per "
                              "view and interpolate "
                            f"(at least {MIN_MAX_SLICES}, as samri_ml-mask --max-slices; "
                            "default: every slice)")
    views = traits.List(traits.Enum("sagittal", "coronal", "axial"),
                        value=["sagittal", "coronal", "axial"], usedefault=True, minlen=1,
                        desc="slice directions whose predictions are averaged (the seed: "
                        "['coronal'])")  # fmt: skip
    flip = traits.Bool(desc="also predict the left-right mirrored volume and average (test-time "
                       "augmentation); default: the model's own choice (a single network is "
                       "mirrored, an ensemble such as the shipped masker is not)")  # fmt: skip
    report = traits.Bool(False, usedefault=True,
                         desc="also draw the mask's outline on coronal slices of in_file into "
                         "out_report (a PNG, as samri_ml-mask --png)")
    # Nipype reserves num_threads CPUs for the node under MultiProc: 0 (TensorFlow's default,
    # every core) counted as none, so a MapNode of masks ran all at once, each on every core
    # a Range: -1 reached TensorFlow, whose failed check aborted the whole Python process
    num_threads = traits.Range(low=0, value=1, usedefault=True, nohash=True,
                             desc="TensorFlow threads, and the CPUs MultiProc reserves for the "
                             "node (0: TensorFlow's default, every core, but reserved as "
                             "none)")  # fmt: skip
    model_checksum = traits.Str(usedefault=True,
                                desc="size and sha256 of the model file used (set from "
                                "'model', else the shipped U-Net's): part of the cache key, so "
                                "that other weights invalidate cached masks")  # fmt: skip

    def _model_checksum_default(self):
        return masker_checksum(self.model)

    def _model_changed(self, new):
        self.model_checksum = masker_checksum(new)

    def get_hashval(self, hash_method=None):
        # the model's content now, when Nipype makes the cache key (not when it was set);
        # in_file's path and content: InFileKeyedInputSpec
        self.model_checksum = masker_checksum(self.model)
        return super().get_hashval(hash_method=hash_method)


def masker_checksum(model=None) -> str:
    """:func:`~samri_ml.models.inference.file_checksum` of a masking model file (None or
    undefined: the shipped U-Net)."""
    from samri_ml.masking.predict import default_model_path
    from samri_ml.models.inference import input_checksum

    return input_checksum(model if traits_defined(model) and model else default_model_path())


class _MaskBrainOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="binary uint8 brain mask on in_file's grid")
    out_file = File(exists=True, desc="in_file multiplied by the mask (every volume if 4D)")
    mask_list = traits.List(File(exists=True),
                                 desc="[out_mask], for antsRegistration's moving_image_masks")  # fmt: skip
    out_report = File(exists=True, desc="the mask outlined on coronal slices of in_file (PNG; "
                      "with report=True)")


class MaskBrain(SimpleInterface):
    """Predict a brain mask with the U-Net and apply it.

    >>> from samri_ml.interfaces import MaskBrain
    >>> node = MaskBrain()
    >>> sorted(node.output_spec().get())
    ['mask_list', 'out_file', 'out_mask', 'out_report']
    """

    input_spec = _MaskBrainInputSpec
    output_spec = _MaskBrainOutputSpec

    def _run_interface(self, runtime):
        from samri_ml.models.inference import run_in_new_process, tensorflow_inherited

        # (below MIN_MAX_SLICES refused where it is set: the trait's range)
        max_slices = self.inputs.max_slices if traits_defined(self.inputs.max_slices) else None
        flip = bool(self.inputs.flip) if traits_defined(self.inputs.flip) else None
        kwargs = {"in_file": self.inputs.in_file, "out_dir": runtime.cwd,
                  "model": self.inputs.model or None, "threshold": self.inputs.threshold,
                  "views": list(self.inputs.views), "flip": flip,
                  "max_slices": max_slices, "num_threads": int(self.inputs.num_threads),
                  "report": bool(self.inputs.report)}
        if tensorflow_inherited():  # TensorFlow hangs in a forked copy of itself
            out = run_in_new_process(__name__, "mask_files", kwargs)
        else:
            out = mask_files(**kwargs)
        self._results.update(out, mask_list=[out["out_mask"]])
        _warn_implausible_volume(self.inputs.in_file, out["out_mask"])
        return runtime


def _warn_implausible_volume(in_file, out_mask) -> None:
    """A :class:`~samri_ml.errors.SamriMLNote` where the mask's volume is no mouse brain's
    (:func:`samri_ml.masks.mask_volume`: a rat, a header's voxel size ten times off), as
    ``samri_ml-mask`` says it: the node gave the mask without a word. Said here, in the
    node's process, not in :func:`mask_files` (a new interpreter's warnings are lost)."""
    import warnings

    import nibabel as nb

    from samri_ml.errors import MaskVolumeNote
    from samri_ml.masks import mask_volume

    note = mask_volume(nb.load(out_mask))[2]
    if note:
        warnings.warn(f"{in_file}: {note}", MaskVolumeNote, stacklevel=2)


def mask_files(in_file, out_dir, model=None, threshold=0.5, views=("sagittal", "coronal",
               "axial"), flip=None, max_slices=None, num_threads=0, report=False) -> dict:
    """What :class:`MaskBrain` does: the mask of ``in_file`` and the masked image, written into
    ``out_dir`` as ``<name>_mask.nii.gz`` and ``<name>_masked.nii.gz``, and with ``report`` the
    mask outlined on the image (:func:`samri_ml.report.mask_figure`) as ``<name>_mask.png``;
    returns their paths as ``{"out_mask": ..., "out_file": ...[, "out_report": ...]}``."""
    import nibabel as nb

    from samri_ml.io import load_nifti
    from samri_ml.masking.predict import apply_mask, model_record_notes, predict_mask

    if num_threads < 0:  # TensorFlow aborts the process on a negative count
        from samri_ml.errors import SamriMLError

        raise SamriMLError(f"num_threads {num_threads}: must be 0 (TensorFlow's default) or "
                           "more")
    if num_threads:
        from samri_ml.models.inference import import_keras

        import_keras()  # TensorFlow too, without its C++ start-up lines
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        except RuntimeError:  # already initialised in this process
            pass
    # out_file keeps in_file's shape; a scaled run is read as float32, never as a float64
    # array
    img = load_nifti(in_file, allow_4d=True, squeeze=False, float32=True)
    model_record_notes(model, views)
    mask = predict_mask(img, model, threshold=threshold, views=tuple(views), flip=flip,
                        max_slices=max_slices)  # fmt: skip
    out_mask = _nii_gz(in_file, "_mask", out_dir)
    out_file = _nii_gz(in_file, "_masked", out_dir)
    nb.save(mask, out_mask)
    nb.save(apply_mask(img, mask), out_file)
    out = {"out_mask": out_mask, "out_file": out_file}
    if report:
        from samri_ml.report import mask_figure

        png = out_mask[: -len(".nii.gz")] + ".png"
        out["out_report"] = str(mask_figure(img, mask, png, title=f"{Path(in_file).name}: "
                                            "predicted brain mask"))
    return out


def _nii_gz(in_file: str, suffix: str, out_dir: str) -> str:
    """``out_dir/<in_file's name without its extension><suffix>.nii.gz``, for .nii, .nii.gz
    and Analyze/NIfTI pairs (.img/.hdr) alike."""
    from samri_ml.io import image_stem

    return str(Path(out_dir) / f"{image_stem(Path(in_file).name)}{suffix}.nii.gz")
