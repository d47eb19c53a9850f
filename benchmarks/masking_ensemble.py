"""Average several brain-masking U-Nets in one Keras model (a candidate masker).

Usage::

    python benchmarks/masking_ensemble.py OUT.keras MODEL.keras MODEL.keras [...]

OUT takes a 64 x 64 slice, as each member does, and gives the mean of the members' brain
probabilities, so every command that takes ``--model`` (``samri_ml-mask``,
``samri_ml-evaluate-masker``, ``benchmarks/example_accuracy.py --mask-model``) runs it as one
network. Run it with ``--no-flip``: the members' average replaces the mirrored prediction, and
two width-8 members without the mirror make as many passes as one with it. How the shipped
network and a GPU-trained one did so: the masker's model card, "Tried on a GPU".
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the averaged model (.keras)")
    ap.add_argument("models", type=Path, nargs="+", help="two or more masking U-Nets (.keras)")
    args = ap.parse_args()
    if len(args.models) < 2:
        ap.error("give two or more models to average")
    if args.out.suffix != ".keras":
        ap.error(f"{args.out}: the output must end in .keras")
    from samri_ml.errors import SamriMLError
    from samri_ml.masking.predict import load_model
    from samri_ml.models.inference import import_keras

    keras = import_keras()
    members = []
    for i, path in enumerate(args.models):
        try:  # the masker's own loading: a missing or unreadable file in one line
            model = load_model(path, "float32")
        except SamriMLError as err:
            ap.error(str(err))
        if model.input_shape != (None, 64, 64, 1) or model.output_shape != (None, 64, 64, 1):
            ap.error(f"{path}: not a brain-masking U-Net (it takes {model.input_shape} and "
                     f"gives {model.output_shape})")
        model.name = f"member_{i}"  # two members of one name cannot sit in one model
        members.append(model)
    inp = keras.Input((64, 64, 1))
    out = keras.layers.Average()([m(inp) for m in members])
    keras.Model(inp, out, name="unet_ensemble").save(args.out)
    print(f"{args.out}: the mean of {len(members)} U-Nets")


if __name__ == "__main__":
    main()
