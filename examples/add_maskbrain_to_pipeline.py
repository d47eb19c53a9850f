"""Add samri_ml's U-Net brain masking to a Nipype pipeline you already have.

Your pipeline (here: N4 bias correction then antsRegistration to a template) gains one node,
``MaskBrain``, whose mask restricts the registration metric to the brain in every stage, as the
seed paper's "Generic Masked" workflow. Unlike the seed, N4 keeps fitting the bias field on the
whole image: with an imperfect mask the mask-restricted field cost one example subject 0.04
Dice (see docs/results.rst). Caution: this is the wiring docs/results.rst measured as harmful on a real
skull-on head (its "Masked registration of a real head": a moving mask alone on the MI stages
shrank the brain into the mask, Dice 0.48 against 0.82 unmasked); it shows how to connect the
node on the example's phantoms. samri_ml's own ``default`` and ``fast`` flavours run their
linear phases brain to brain instead (the scan and the template each times its mask), then
SyN on the whole images (docs/results.rst, "the linear phases brain to brain"). Run:

    python examples/add_maskbrain_to_pipeline.py T2w.nii.gz TEMPLATE.nii.gz TEMPLATE_MASK.nii.gz OUT_DIR
"""

import re
import sys
from pathlib import Path

from nipype.interfaces.ants import N4BiasFieldCorrection, Registration
from nipype.interfaces.io import DataSink
from nipype.pipeline import engine as pe

from samri_ml.ants import ensure_ants_on_path, program
from samri_ml.interfaces import MaskBrain


def existing_pipeline(in_file, template, template_mask, base_dir):
    """What a lab may already run: N4, then a quick affine registration to a template."""
    wf = pe.Workflow(name="my_pipeline", base_dir=str(base_dir))
    # command=program(...): the ANTs program by its full path (antspyx's, where there is no
    # system ANTs), so that cluster jobs that do not get this shell's PATH find it too
    n4 = pe.Node(N4BiasFieldCorrection(dimension=3, input_image=str(in_file),
                                       command=program("N4BiasFieldCorrection")), name="n4")
    reg = pe.Node(Registration(
        command=program("antsRegistration"),
        fixed_image=str(template), fixed_image_masks=[str(template_mask)] * 2,
        initial_moving_transform_com=1,  # start from the centres of mass: without it, this
        # affine often diverges on a head scan whose header places it off the template
        transforms=["Rigid", "Affine"], transform_parameters=[(0.1,), (0.1,)],
        number_of_iterations=[[200, 100], [200, 100]], metric=["MI", "MI"],
        metric_weight=[1, 1], radius_or_number_of_bins=[32, 32],
        # MI on every voxel of the template mask: on a 25 % sample this pipeline, on two
        # threads, diverged in 1 of 6 runs of the example subject (Dice 0.05, the others
        # 0.969-0.971; every voxel: 0.9700 in 4 of 4; see docs/results.rst, "on two threads")
        sampling_strategy=["None", "None"], sampling_percentage=[1.0, 1.0],
        convergence_threshold=[1e-6, 1e-6], convergence_window_size=[10, 10],
        smoothing_sigmas=[[2, 1], [1, 0]], shrink_factors=[[4, 2], [2, 1]],
        write_composite_transform=True, output_warped_image=True), name="register")
    wf.connect(n4, "output_image", reg, "moving_image")
    return wf


def add_masking(wf, in_file):
    """The only change: a MaskBrain node feeding the moving-image masks of the registration.

    Both stages (rigid, affine) are restricted to the brain; N4 keeps fitting the bias field
    on the whole image. (``niu_repeat([False, True])`` would leave the first stage unmasked.)
    """
    # report=True: also a PNG of the mask outlined on the scan (out_report), to check it by eye
    # mem_gb: a MaskBrain node peaks near 0.9 GB on the example's scans, more on larger ones;
    # Nipype reserves 0.2 GB per node unless told (docs/masking.rst)
    mask = pe.Node(MaskBrain(in_file=str(in_file), report=True), name="mask_brain", mem_gb=2)
    reg = wf.get_node("register")
    # one moving mask per registration stage (here 2)
    repeat = pe.Node(niu_repeat([True, True]), name="moving_masks")
    wf.connect(mask, "out_mask", repeat, "in_file")
    wf.connect(repeat, "out", reg, "moving_image_masks")
    # Nipype deletes a node's outputs that nothing downstream uses: a DataSink keeps the picture
    sink = pe.Node(DataSink(base_directory=str(Path(wf.base_dir) / "qc")), name="qc_sink")
    wf.connect(mask, "out_report", sink, "@mask_picture")
    return wf


def niu_repeat(use):
    """A node that gives the mask for each stage where ``use`` is true, "NULL" elsewhere."""
    from nipype.interfaces.utility import Function

    def repeat(in_file, use):
        return [in_file if u else "NULL" for u in use]

    iface = Function(function=repeat, input_names=["in_file", "use"], output_names=["out"])
    iface.inputs.use = use
    return iface


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n")[0])
    for name in ("T2w", "TEMPLATE", "TEMPLATE_MASK", "OUT_DIR"):
        p.add_argument(name, type=Path)
    args = p.parse_args(argv)
    paths = {name: path.resolve() for name, path in vars(args).items()}
    for name, path in paths.items():
        if name != "OUT_DIR" and not path.is_file():
            p.error(f"{name} {path}: no such file")
        if re.search(r"\s", str(path)):
            # Nipype hands some paths to the ANTs programs unquoted (antsRegistration's
            # --metric MI[ fixed, moving, ... ]): the run failed in a Nipype traceback
            p.error(f"{name} {str(path)!r} has a space in its path, which Nipype hands to the "
                    "ANTs programs unquoted; hint: copy or link it to a path without spaces")
    in_file, out = paths["T2w"], paths["OUT_DIR"]
    ensure_ants_on_path()  # antspyx-backed antsRegistration & co. when no system ANTs
    wf = add_masking(existing_pipeline(in_file, paths["TEMPLATE"], paths["TEMPLATE_MASK"], out),
                     in_file)
    wf.run()
    print(f"done: see {out / 'my_pipeline'}; the mask, drawn on the scan: "
          f"{next((out / 'qc').glob('*_mask.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
