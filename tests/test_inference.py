"""The shipped networks' forward pass: its precision (float32 or bfloat16) and its compiled call."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from samri_ml.errors import SamriMLError
from samri_ml.models import inference

ZEN4_FLAGS = "flags\t\t: fpu vme sse sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("processor\t: 0\n" + ZEN4_FLAGS, True),
        ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
        ("flags\t\t: fpu sse2 avx2 fma avx512f\n", False),  # AVX-512 without bfloat16
        ("flags\t\t: fpu sse2 avx2 fma avx512_bf16x\n", False),  # a flag is a whole word
        ("processor\t: 0\nFeatures\t: fp asimd bf16\n", False),  # no x86 flags line
        ("", False),
    ],
)
def test_native_bfloat16_reads_the_cpu_flags(cpuinfo, native):
    assert inference.native_bfloat16(cpuinfo) is native


def test_precision_follows_the_environment(monkeypatch):
    for value in ("float32", "bfloat16", " BFloat16 "):
        monkeypatch.setenv(inference.PRECISION_VARIABLE, value)
        assert inference.inference_precision() == value.strip().lower()
    monkeypatch.setenv(inference.PRECISION_VARIABLE, "auto")
    expected = "bfloat16" if inference.native_bfloat16() else "float32"
    assert inference.inference_precision() == expected
    with pytest.raises(ValueError, match="precision 'fp16'"):
        inference.mark_for_inference(object(), "fp16")
    monkeypatch.setenv(inference.PRECISION_VARIABLE, "fp16")
    with pytest.raises(SamriMLError, match="SAMRI_ML_PRECISION=fp16: unknown precision"):
        inference.inference_precision()


@pytest.fixture(scope="module")
def shipped():
    """The shipped masker: an ensemble of two U-Nets (models nested in one model)."""
    from samri_ml.masking.predict import default_model_path
    from samri_ml.models.unet import CUSTOM_OBJECTS

    keras = inference.import_keras()
    return keras.saving.load_model(default_model_path(), custom_objects=CUSTOM_OBJECTS,
                                   compile=False)  # fmt: skip


@pytest.fixture(scope="module")
def unet(shipped):
    """One U-Net: the shipped ensemble's first member (J, shipped alone before it)."""
    return shipped.get_layer("member_0")


def _policy(layer) -> str:
    return layer.dtype_policy.name


def test_bfloat16_copy_rounds_the_convolutions_once_and_keeps_the_output_layer_in_float32(
        unet):
    """The convolutions hold their weights rounded to bfloat16 (``mixed_bfloat16`` rounded
    them on every call), the output layer its float32 weights; the same masks' probabilities
    to the last bit as with every convolution ``mixed_bfloat16``."""
    import json

    copy = inference.bfloat16_copy(unet)
    convs = [layer for layer in copy.layers if type(layer).__name__ == "Conv2D"]
    assert {_policy(layer) for layer in convs[:-1]} == {"bfloat16"}
    assert copy.layers[-1].name == "mask" and _policy(copy.layers[-1]) == "float32"
    for old, new in zip(unet.layers, copy.layers, strict=True):
        for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
            rounded = a.astype(b.dtype) if new in convs[:-1] else a
            assert b.dtype == rounded.dtype and np.array_equal(rounded, b)
    # the original is untouched
    assert {_policy(layer) for layer in unet.layers} == {"float32"}
    config = json.loads(json.dumps(copy.get_config()))
    for layer in config["layers"]:
        if layer["class_name"] == "Conv2D" and layer["config"]["name"] != "mask":
            layer["config"]["dtype"] = "mixed_bfloat16"
    mixed = unet.__class__.from_config(config)
    mixed.set_weights(unet.get_weights())
    x = np.random.default_rng(6).random((4, 64, 64, 1), dtype=np.float32)
    assert np.array_equal(np.asarray(copy(x)), np.asarray(mixed(x)))


def test_bfloat16_copy_converts_nested_models():
    """The plate ensemble's members are functional models inside the ensemble."""
    keras = inference.import_keras()
    inner_in = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inner_in)
    x = keras.layers.GlobalAveragePooling2D()(x)
    inner = keras.Model(inner_in, keras.layers.Dense(3)(x), name="member")
    outer_in = keras.Input((16, 16, 1))
    outer = keras.Model(outer_in, keras.layers.Rescaling(2.0, name="scale")(inner(outer_in)))
    copy = inference.bfloat16_copy(outer)
    member = copy.get_layer("member")
    kinds = {type(layer).__name__: _policy(layer) for layer in member.layers}
    assert kinds["Conv2D"] == "bfloat16"
    assert kinds["Dense"] == kinds["GlobalAveragePooling2D"] == "float32"
    x = np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(outer(x)), atol=0.05, rtol=0.02)


def test_both_inference_copies_reach_a_model_nested_two_deep():
    """The bfloat16 and the batch-normalisation-folded copies walk a model's config with one
    walker: a functional model inside a model inside the model is converted by both (its
    convolution in bfloat16, its batch normalisation folded), and both copies give the
    model's outputs."""
    keras = inference.import_keras()
    inner_in = keras.Input((16, 16, 1))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(inner_in))
    inner = keras.Model(inner_in, keras.layers.GlobalAveragePooling2D()(x), name="inner")
    middle_in = keras.Input((16, 16, 1))
    middle = keras.Model(middle_in, keras.layers.Dense(3)(inner(middle_in)), name="middle")
    outer_in = keras.Input((16, 16, 1))
    outer = _with_batch_statistics(
        keras.Model(outer_in, keras.layers.Rescaling(2.0)(middle(outer_in))), 9)
    x = np.random.default_rng(8).random((2, 16, 16, 1), dtype=np.float32)
    want = np.asarray(outer(x, training=False))

    rounded = inference.bfloat16_copy(outer).get_layer("middle").get_layer("inner")
    assert _policy(rounded.get_layer("conv")) == "bfloat16"
    np.testing.assert_allclose(np.asarray(inference.bfloat16_copy(outer)(x)), want, rtol=0.05,
                               atol=0.05)
    folded = inference.batchnorm_folded_copy(outer)
    kinds = [type(layer).__name__
             for layer in folded.get_layer("middle").get_layer("inner").layers]
    assert "BatchNormalization" not in kinds and "Conv2D" in kinds
    np.testing.assert_allclose(np.asarray(folded(x)), want, atol=1e-5)


def test_a_model_that_cannot_be_copied_runs_in_float32_with_a_note():
    """A user's model with a custom layer Keras cannot rebuild from its config."""
    from samri_ml.errors import SamriMLNote

    keras = inference.import_keras()

    class Doubling(keras.layers.Layer):  # not registered: from_config cannot find it
        def call(self, x):
            return 2 * x

    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, Doubling()(keras.layers.Conv2D(2, 3, padding="same")(inp)))
    inference.mark_for_inference(model, "bfloat16")
    with pytest.warns(SamriMLNote, match="runs in float32, not bfloat16"):
        fn = inference.inference_fn(model)
    x = np.random.default_rng(3).random((2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(model(x)), atol=1e-6)


def test_a_model_being_trained_is_run_as_it_is_now():
    """An unmarked model (training, validation during training) runs in float32 with its
    current weights: the compiled call holds the model itself, not a copy."""
    keras = inference.import_keras()
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same")(inp))
    fn = inference.inference_fn(model)
    x = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(model(x)), atol=1e-6)
    model.set_weights([w + 0.5 for w in model.get_weights()])
    np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(model(x)), atol=1e-6)


def _with_batch_statistics(model, seed: int):
    """``model`` with moving means and variances of its batch normalisations set as after
    training (those of a new model are 0 and 1, which folding would leave as they are)."""
    rng = np.random.default_rng(seed)
    layers = [model]
    while layers:
        layer = layers.pop()
        layers += getattr(layer, "layers", [])
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.05, 3, n)])
    return model


def test_a_float32_network_runs_with_its_batch_normalisations_folded():
    """A plate-ensemble-like model (embedding networks nested in one model, one behind a
    Resizing layer) marked float32 runs with every batch normalisation folded into the
    convolution before it, and gives the plain Keras call's embeddings (within 1e-6); a batch
    normalisation that does not follow a convolution directly is kept."""
    from samri_ml.models.siamese import build_embedding_net

    keras = inference.import_keras()
    inp = keras.Input((48, 48, 1))
    small = build_embedding_net(32, embedding_dim=8, width=4)
    small.name = "member_small"
    large = build_embedding_net(48, embedding_dim=8, width=4)
    large.name = "member_large"
    after_pooling = keras.layers.BatchNormalization(name="kept")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp)))
    out = keras.layers.Concatenate()([small(keras.layers.Resizing(32, 32, antialias=True)(inp)),
                                      large(inp), after_pooling])
    model = _with_batch_statistics(keras.Model(inp, out), 4)
    folded = inference.batchnorm_folded_copy(model)
    kinds = [type(layer).__name__ for member in ("member_small", "member_large")
             for layer in folded.get_layer(member).layers]
    assert "BatchNormalization" not in kinds and kinds.count("Conv2D") == 7 * 2
    assert folded.get_layer("kept")  # behind a pooling: not folded
    x = np.random.default_rng(5).random((3, 48, 48, 1), dtype=np.float32)
    fn = inference.inference_fn(inference.mark_for_inference(model, "float32"))
    np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(model(x, training=False)),
                               atol=1e-6)
    # nothing to fold (the U-Net has no batch normalisation): the model itself
    plain = keras.Model(inp, keras.layers.Conv2D(2, 3)(inp))
    assert inference.batchnorm_folded_copy(plain) is plain


def test_a_bfloat16_mask_equals_the_float32_one(shipped):
    """The shipped masker in both precisions on the example phantom's skull-on heads: float32
    output either way, probabilities within 0.15 (99.9 % of voxels within 0.04), masks with Dice >= 0.998 (measured:
    0.9991-0.9998 here; on 29 real and phantom scans the Dice with their references moved by
    at most 0.0006)."""
    from samri_ml.example import make_template
    from samri_ml.masking.predict import predict_mask, predict_volume
    from samri_ml.masking.preprocess import to_ras
    from samri_ml.metrics import dice

    keras = inference.import_keras()
    phantom = make_template(0, contrasts=("t2", "t1", "epi"), supersample=1)
    models = {}
    for precision in ("float32", "bfloat16"):
        model = keras.models.clone_model(shipped)
        model.set_weights(shipped.get_weights())
        models[precision] = inference.mark_for_inference(model, precision)
    x = np.random.default_rng(2).random((4, 64, 64, 1), dtype=np.float32)
    assert np.asarray(inference.inference_fn(models["bfloat16"])(x)).dtype == np.float32
    for contrast in ("T2w", "T1w", "bold"):
        img = phantom[contrast]
        ras, _ = to_ras(np.asarray(img.dataobj, np.float32), img.affine)
        p32, p16 = (predict_volume(models[p], ras) for p in ("float32", "bfloat16"))
        diff = np.abs(p32 - p16)
        # measured: max 0.024-0.055, 99.9th percentile 0.007-0.018
        assert diff.max() < 0.15 and np.percentile(diff, 99.9) < 0.04
        m32, m16 = (np.asarray(predict_mask(img, models[p]).dataobj) > 0 for p in models)
        assert dice(m32, m16) >= 0.998, contrast


def test_an_unknown_precision_stops_a_command_with_one_line(tmp_path, monkeypatch):
    from samri_ml.example import make_template

    img = make_template(0, contrasts=("t2",), supersample=1)["T2w"]
    src = tmp_path / "head.nii.gz"
    img.to_filename(src)
    monkeypatch.setenv(inference.PRECISION_VARIABLE, "half")
    proc = subprocess.run([sys.executable, "-m", "samri_ml.cli.mask", str(src),
                           str(tmp_path / "mask.nii.gz")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SAMRI_ML_PRECISION=half: unknown precision" in lines[0]
    assert not (tmp_path / "mask.nii.gz").exists()


def _first_conv(config):
    """The first Conv2D layer's entry in a saved model's ``config.json`` (in an ensemble's
    member too), found as the inference copies walk nested models."""
    return next(layer for cfg, _ in inference._functional_configs(config["config"])
                for layer in cfg["layers"] if layer["class_name"] == "Conv2D")


def _model_keras_refuses(tmp_path, saved_by: str):
    """The shipped U-Net's file as a later Keras might write it: an argument this Keras does
    not know in a layer's configuration, and ``saved_by`` in its metadata."""
    import json
    import zipfile

    from samri_ml.masking.predict import default_model_path

    out = tmp_path / f"saved_by_{saved_by}.keras"
    with zipfile.ZipFile(default_model_path()) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                _first_conv(config)["config"]["future_option"] = True
                data = json.dumps(config).encode()
            elif item.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "keras_version": saved_by}).encode()
            dst.writestr(item, data)
    return out


def test_a_model_from_a_newer_keras_is_refused_in_one_short_line(tmp_path, capsys,
                                                                 example_dataset):
    """With Keras 3.3-3.14 (which setup.cfg allowed) the shipped models failed to load, and
    samri_ml-mask and samri_ml-identify-plate printed the whole model configuration (about 40
    kB) as their "one line". A model saved by a newer Keras says so, with a hint; another
    failure gives Keras' innermost cause, shortened."""
    import cv2

    from samri_ml.cli.identify_plate import main as identify
    from samri_ml.cli.mask import main as mask

    version = inference.import_keras().__version__
    scan = next(example_dataset.glob("sub-01/ses-1/anat/*_T2w.nii.gz"))
    section = tmp_path / "section.png"
    picture = np.random.default_rng(0).integers(0, 60, (160, 200)).astype(np.uint8)
    cv2.ellipse(picture, (100, 80), (80, 60), 0, 0, 360, 200, -1)  # a section-like blob
    cv2.imwrite(str(section), picture)
    newer = _model_keras_refuses(tmp_path, "99.0.0")
    same = _model_keras_refuses(tmp_path, version)
    for prog, main, argv in (("samri_ml-mask", mask, [str(scan), str(tmp_path / "m.nii.gz")]),
                             ("samri_ml-identify-plate", identify, [str(section)])):
        assert main([*argv, "--model", str(newer)]) == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ": note: " not in ln]
        assert err == [f"{prog}: error: {newer}: cannot load the model (saved by Keras 99.0.0, "
                       f"this is Keras {version}); hint: pip install -U 'keras>=99.0.0'"], err
        assert main([*argv, "--model", str(same)]) == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ": note: " not in ln]
        assert len(err) == 1 and len(err[0]) < 500, err
        assert f"{prog}: error: {same}: " in err[0] and "future_option" in err[0], err
    assert not (tmp_path / "m.nii.gz").exists()


def test_two_tensorflow_builds_in_one_environment_are_named(tmp_path, monkeypatch):
    """``pip install samri_ml`` into a lab's environment with the GPU ``tensorflow`` added
    ``tensorflow-cpu`` (samri_ml's requirement on x86-64 Linux) over the same folder without a
    word: the build installed last won. A second distribution's metadata beside this
    environment's own TensorFlow is now named, with the way back, once per process."""
    import sys
    import warnings
    from importlib import metadata

    from samri_ml.errors import SamriMLNote
    from samri_ml.models import inference

    ours = next(n for n in inference.TENSORFLOW_BUILDS if _installed(metadata, n))
    other = "tensorflow" if ours != "tensorflow" else "tensorflow-cpu"
    info = tmp_path / f"{other.replace('-', '_')}-2.99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {other}\nVersion: 2.99.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inference._note_two_tensorflows.cache_clear()  # as in a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inference._note_two_tensorflows()
        inference._note_two_tensorflows()  # once per process
    notes = [str(w.message) for w in caught if issubclass(w.category, SamriMLNote)]
    if not sys.platform.startswith("linux"):
        assert notes == []
        return
    assert len(notes) == 1, notes
    assert f"{other} 2.99.0" in notes[0] and "are both installed" in notes[0]
    assert "hint: to keep tensorflow: pip uninstall -y tensorflow-cpu" in notes[0]
    # one build alone says nothing
    assert inference.two_tensorflows_note({ours: "2.21.0", "keras": "3.15.1"}) is None


def _installed(metadata, name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_a_keras_backend_that_cannot_be_used_is_named(tmp_path, example_dataset):
    """A ``KERAS_BACKEND`` left set for another project (``torch`` or ``jax`` where they are
    not installed, ``TensorFlow`` in capitals) stopped samri_ml-mask and -identify-plate with
    ``ModuleNotFoundError: No module named 'torch'`` or ``ValueError: Unable to import
    backend : TensorFlow``, without a word of the variable. Real processes: Keras reads the
    variable once, when it is first imported."""
    import importlib.util
    import os

    import cv2

    scan = next(example_dataset.glob("sub-01/ses-1/anat/*_T2w.nii.gz"))
    section = tmp_path / "section.png"
    picture = np.zeros((160, 200), np.uint8)
    cv2.ellipse(picture, (100, 80), (80, 60), 0, 0, 360, 200, -1)  # a section-like blob
    cv2.imwrite(str(section), picture)
    backends = ["TensorFlow"] + [b for b in ("torch", "jax")
                                 if importlib.util.find_spec(b) is None][:1]
    for backend in backends:
        for prog, argv in (("mask", [str(scan), str(tmp_path / "m.nii.gz")]),
                           ("identify_plate", [str(section)])):
            run = subprocess.run([sys.executable, "-m", f"samri_ml.cli.{prog}", *argv],
                                 env={**os.environ, "KERAS_BACKEND": backend},
                                 capture_output=True, text=True)  # fmt: skip
            err = run.stderr.strip().splitlines()
            assert run.returncode == 1 and len(err) == 1, run.stderr
            assert err[0].startswith(f"samri_ml-{prog.replace('_', '-')}: error: "
                                     f"KERAS_BACKEND={backend}: Keras cannot use this backend ("), err
            assert err[0].endswith("; hint: unset KERAS_BACKEND (TensorFlow, installed with "
                                   "samri_ml) or install the backend's package (jax, torch)")
    assert not (tmp_path / "m.nii.gz").exists()


def test_the_compiled_forward_pass_leaves_nothing_in_tmpdir(tmp_path, example_dataset):
    """Every masking step of samri_ml-register left an ``__autograph_generated_file*.py`` in
    TMPDIR: TensorFlow's autograph writes one to convert the traced function and removes it
    at exit, which a Nipype worker (ended with ``os._exit``) never reaches. Nothing there to
    convert: the trace is made without autograph. A real process, ended as a worker is."""
    import os

    scan = next(example_dataset.glob("sub-01/ses-1/anat/*_T2w.nii.gz"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import os, sys, nibabel as nb; from samri_ml.masking.predict import predict_mask; "
            "mask = predict_mask(nb.load(sys.argv[1])); "
            "print(int(mask.get_fdata().sum()), flush=True); os._exit(0)")
    run = subprocess.run([sys.executable, "-c", code, str(scan)], capture_output=True,
                         text=True, env={**os.environ, "TMPDIR": str(tmp)})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) > 10_000  # a brain was masked
    assert list(tmp.iterdir()) == []


def test_predicting_leaves_the_callers_environment_and_stderr_alone(tmp_path):
    """``predict_mask`` in a lab's notebook set ``TF_CPP_MIN_LOG_LEVEL=2`` in its environment
    for good (its own TensorFlow scripts run from there lost their warnings). It is now set
    for the import only; TensorFlow's C++ lines still stay off stderr, also when the network
    runs. A Python process of its own, as a notebook's kernel is."""
    import os

    script = """
import os
import numpy as np
from samri_ml.example import make_template
from samri_ml.masking.predict import predict_mask
mask = predict_mask(make_template(0, contrasts=("t2",), supersample=1)["T2w"])
print(int(np.asarray(mask.dataobj).sum() > 0), os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "SAMRI_ML_TF"))}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=300, check=True)
    assert r.stdout.split() == ["1", "None"]
    assert r.stderr == ""


def test_the_precision_asked_for_in_a_session_is_the_one_a_mask_is_predicted_in(monkeypatch):
    """``SAMRI_ML_PRECISION`` set in a notebook after a first ``predict_mask`` (float32, to
    compare with the bfloat16 default) was ignored: the cached U-Net kept the precision of its
    first load. Each precision now has its own loaded network; both give the same mask."""
    from samri_ml.example import make_template
    from samri_ml.masking.predict import load_model, predict_mask
    from samri_ml.metrics import dice

    head = make_template(0, contrasts=("t2",), supersample=1)["T2w"]
    masks = {}
    for precision in ("bfloat16", "float32"):
        monkeypatch.setenv(inference.PRECISION_VARIABLE, precision)
        assert load_model()._samri_ml_precision == precision
        masks[precision] = predict_mask(head)
    assert load_model() is load_model()  # still loaded once per precision
    assert dice(masks["bfloat16"], masks["float32"]) > 0.99


def test_the_shared_masker_is_not_marked_with_another_precision(monkeypatch):
    """``load_model()`` gives every caller of the process one network per file and precision:
    a notebook marking it float32 (to compare with the bfloat16 default) made every later
    ``predict_mask`` and ``MaskBrain`` run of the process float32 too. The mark is refused
    with a hint; ``load_model(precision=...)`` gives a network of that precision, and the
    shared one still predicts in its own."""
    from samri_ml.masking.predict import load_model, predict_probabilities

    monkeypatch.setenv(inference.PRECISION_VARIABLE, "bfloat16")
    shared = load_model()
    x = np.random.default_rng(4).random((8, 64, 64, 1), dtype=np.float32)
    before = predict_probabilities(shared, x)
    with pytest.raises(SamriMLError, match=r"hint: load one in float32: load_model\(path, "
                                           r"precision='float32'\)"):
        inference.mark_for_inference(shared, "float32")
    assert inference.mark_for_inference(shared, "bfloat16") is shared  # its own precision
    own = load_model(precision="float32")
    assert own is not shared and load_model() is shared
    np.testing.assert_array_equal(predict_probabilities(load_model(), x), before)
    float32 = predict_probabilities(own, x)
    assert np.abs(float32 - before).max() > 1e-4  # the precisions tell apart
    with pytest.raises(SamriMLError, match="precision 'fp16': one of float32, bfloat16"):
        load_model(precision="fp16")


def test_a_marked_model_trained_afterwards_runs_with_its_new_weights():
    """A model marked for inference (as samri_ml's loaders give it) whose forward pass has run,
    then fine-tuned: its batch-normalisation-folded copy, made at the first call, kept the
    weights it had then (the embeddings of before the training). Compiled since, it runs as it
    is."""
    keras = inference.import_keras()
    inp = keras.Input((8, 8, 1))
    out = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(inp))
    model = inference.mark_for_inference(keras.Model(inp, keras.layers.Flatten()(out)),
                                         "float32")
    x = np.random.default_rng(2).random((4, 8, 8, 1), dtype=np.float32)
    before = np.asarray(inference.inference_fn(model)(x))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, np.ones((4, 128), np.float32), epochs=2, verbose=0)
    now = np.asarray(model(x, training=False))
    assert np.abs(now - before).max() > 0.1  # the training changed the output
    np.testing.assert_allclose(np.asarray(inference.inference_fn(model)(x)), now, atol=1e-5)


# bfloat16: outputs up to 4 after the noisy weights, 0.6 % of that in rounding (0.065 seen);
# the copy that kept its old weights is off by more than 1
@pytest.mark.parametrize(("precision", "atol"), [("float32", 1e-5), ("bfloat16", 0.2)])
def test_a_marked_model_given_new_weights_runs_with_them(tmp_path, precision, atol):
    """A marked model whose forward pass has run, then given other weights without a compile
    (``set_weights``, ``load_weights``): its batch-normalisation-folded (float32) or bfloat16
    copy, made at the first call, kept the weights it had then (outputs off by more than 1).
    Now the next call makes a new copy; a model trained by a traced step of its own loop (no
    compile: Keras' optimizer writes the TensorFlow variables themselves) runs as it is."""
    import tensorflow as tf

    keras = inference.import_keras()
    inp = keras.Input((8, 8, 1))
    out = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(inp))
    model = _with_batch_statistics(keras.Model(inp, keras.layers.Flatten()(out)), 7)
    inference.mark_for_inference(model, precision)
    x = np.random.default_rng(2).random((4, 8, 8, 1), dtype=np.float32)
    before = np.asarray(inference.inference_fn(model)(x))
    np.testing.assert_allclose(before, np.asarray(model(x, training=False)), atol=atol)
    model.save_weights(tmp_path / "before.weights.h5")

    rng = np.random.default_rng(3)
    model.set_weights([w + rng.normal(0, 1, w.shape) for w in model.get_weights()])
    now = np.asarray(model(x, training=False))
    assert np.abs(now - before).max() > 1
    np.testing.assert_allclose(np.asarray(inference.inference_fn(model)(x)), now, atol=atol)

    model.load_weights(tmp_path / "before.weights.h5")
    np.testing.assert_allclose(np.asarray(inference.inference_fn(model)(x)), before, atol=1e-6)

    opt = keras.optimizers.SGD(0.5)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(batch, training=False) - 1.0) ** 2)
        grads = tape.gradient(loss, model.trainable_weights)
        opt.apply_gradients(zip(grads, model.trainable_weights, strict=True))

    for _ in range(3):
        step(x)
    now = np.asarray(model(x, training=False))
    assert np.abs(now - before).max() > 0.1
    np.testing.assert_allclose(np.asarray(inference.inference_fn(model)(x)), now, atol=1e-5)


def test_a_model_marked_again_with_another_precision_runs_in_that_one():
    """A model marked bfloat16 whose forward pass has run, then marked float32 (a notebook
    comparing the two on one loaded model): it kept running its bfloat16 copy (off by 0.006
    from the float32 call, the same outputs to the bit). Now each mark runs a copy of its own
    precision, and the compiled call of the earlier one (which holds its copy's weights) is
    let go."""
    import gc
    import weakref

    keras = inference.import_keras()
    inp = keras.Input((8, 8, 1))
    out = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(inp))
    model = _with_batch_statistics(keras.Model(inp, keras.layers.Flatten()(out)), 8)
    x = np.random.default_rng(2).random((4, 8, 8, 1), dtype=np.float32)
    plain = np.asarray(model(x, training=False))
    outputs, calls = {}, []
    for precision in ("bfloat16", "float32", "bfloat16"):
        fn = inference.inference_fn(inference.mark_for_inference(model, precision))
        outputs.setdefault(precision, []).append(np.asarray(fn(x)))
        calls.append(weakref.ref(fn))
        del fn
    assert np.abs(outputs["bfloat16"][0] - plain).max() > 1e-3  # bfloat16 is seen
    np.testing.assert_allclose(outputs["float32"][0], plain, atol=1e-5)
    np.testing.assert_array_equal(outputs["bfloat16"][1], outputs["bfloat16"][0])
    gc.collect()
    assert [call() is None for call in calls] == [True, True, False]


def test_the_plate_precision_benchmark_compares_two_precisions():
    """benchmarks/plates_precision.py marked the one model that two ``PlateIdentifier()``
    share float32 then bfloat16: its float32 column was bfloat16. Each identifier now has a
    model of its own precision: the float32 one gives the plain Keras call's embeddings."""
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "plates_precision.py"
    spec = importlib.util.spec_from_file_location("plates_precision", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    models = {p: ident.model for p, ident in bench.identifiers().items()}
    shape = models["float32"].input_shape[1:]
    x = np.random.default_rng(4).random((2, *shape), dtype=np.float32)
    plain = np.asarray(models["float32"](x, training=False))
    out = {p: np.asarray(inference.inference_fn(m)(x)) for p, m in models.items()}
    np.testing.assert_allclose(out["float32"], plain, atol=1e-5)
    assert np.abs(out["bfloat16"] - plain).max() > 1e-4


#: a marked float32 model (its batch normalisation folded) trained by a loop of its own on
#: the PyTorch backend, as Keras' guide writes one; prints how far the forward pass is from
#: the model's own call before and after
_TORCH_OWN_LOOP = """
import numpy as np
import torch
from samri_ml.models import inference

keras = inference.import_keras()
inp = keras.Input((8, 8, 1))
out = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(inp))
model = inference.mark_for_inference(keras.Model(inp, keras.layers.Flatten()(out)), "float32")
x = np.random.default_rng(2).random((4, 8, 8, 1), dtype=np.float32)
before = keras.ops.convert_to_numpy(inference.inference_fn(model)(x))
opt = keras.optimizers.SGD(0.5)
for _ in range(3):
    loss = ((model(torch.tensor(x), training=False) - 1.0) ** 2).mean()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        opt.apply([v.value.grad for v in model.trainable_weights], model.trainable_weights)
now = keras.ops.convert_to_numpy(model(x, training=False))
fn = keras.ops.convert_to_numpy(inference.inference_fn(model)(x))
print(np.abs(now - before).max(), np.abs(fn - now).max())
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed (KERAS_BACKEND=torch)")
def test_a_marked_model_trained_by_a_torch_loop_runs_with_its_new_weights():
    """On the PyTorch backend Keras' optimizers add to a variable's tensor in place, past
    every Keras method the weights' watch counted: a marked model trained by a loop of its
    own (no compile) kept running the copy of its old weights (off by 1.2). The tensors'
    own write counters are read now."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    r = subprocess.run([sys.executable, "-c", _TORCH_OWN_LOOP], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    moved, off = (float(v) for v in r.stdout.split()[-2:])
    assert moved > 0.1  # the training changed the output
    assert off < 1e-5


_TORCH_NO_GRAD = """
import keras, numpy as np
from samri_ml.models import inference
inp = keras.Input((8, 8, 1))
model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
out = inference.inference_fn(model)(np.ones((4, 8, 8, 1), np.float32))
direct = model(np.ones((4, 8, 8, 1), np.float32), training=False)
print(bool(out.requires_grad), bool(direct.requires_grad))
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed (KERAS_BACKEND=torch)")
def test_the_torch_forward_pass_keeps_no_autograd_record():
    """On PyTorch the inference pass ran with autograd recording it, as a plain call does:
    evaluating a ResNet101V2 plate network during GPU training ran out of memory."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    r = subprocess.run([sys.executable, "-c", _TORCH_NO_GRAD], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["False", "True"]  # ours without, the plain call with
