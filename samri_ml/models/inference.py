"""Fast forward passes of the shipped networks (shared by the masker and the plate ranker)."""

from __future__ import annotations

import functools
import os
import re
import sys

_FNS: dict = {}

#: ops the plate ensemble runs at once: its members are independent branches of one graph, and
#: running two of them side by side, each on half the threads, beats running one at a time on
#: all of them (2026-12-01, sixth session, 2 cores: 8-9 against 12-13 ms for a section and its
#: mirror; no slower for batches of 20 or 64). The U-Net is one chain of layers: intra-op
#: threads only (two ops at once made a volume 30-70 % slower).
PLATE_PARALLEL_OPS = 2


def thread_environment(threads: int, parallel_ops: int = 1) -> dict[str, str]:
    """TensorFlow's thread variables for ``threads`` CPU threads (0: TensorFlow's default),
    with up to ``parallel_ops`` independent ops running at once, each on
    ``threads // parallel_ops`` threads (at least one)."""
    if threads <= 0:
        return {"TF_NUM_INTRAOP_THREADS": "0", "TF_NUM_INTEROP_THREADS": "1"}
    at_once = max(1, min(parallel_ops, threads))
    return {
        "TF_NUM_INTRAOP_THREADS": str(max(1, threads // at_once)),
        "TF_NUM_INTEROP_THREADS": str(at_once),
    }


def set_thread_environment(threads: int, parallel_ops: int = 1) -> None:
    """Set :func:`thread_environment` (before TensorFlow is imported; it reads them once).
    Variables already set in the environment win."""
    for key, value in thread_environment(threads, parallel_ops).items():
        os.environ.setdefault(key, value)


def import_keras():
    """``import keras`` (and TensorFlow) without the C++ start-up lines on stderr.

    TensorFlow 2.21 prints ``WARNING: All log messages before absl::InitializeLog() ...`` and
    ``oneDNN custom operations are on ...`` from C++ while it is imported, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says, so a command's one-line error came after four lines of
    noise. Those lines are dropped by pointing file descriptor 2 at /dev/null for the import
    only (Python errors of the import still raise normally). ``SAMRI_ML_TF_LOGS=1`` keeps them.
    ``TF_CPP_MIN_LOG_LEVEL`` is 2 for the import only, where it was not set: TensorFlow keeps
    the level it read, and the caller's environment (a notebook's, its subprocesses') is left
    as it was (it kept TensorFlow's warnings from the lab's own scripts run from there).
    """
    refuse_inherited_tensorflow()  # loading a model hangs there too, not only running one
    if "keras" not in sys.modules:
        _note_two_tensorflows()
    if "keras" in sys.modules or os.environ.get("SAMRI_ML_TF_LOGS") == "1":
        return _import_keras()
    from samri_ml.io import quiet_stderr

    ours = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if ours:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        with quiet_stderr():
            return _import_keras()
    finally:
        if ours:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


def _import_keras():
    """``import keras``; a ``KERAS_BACKEND`` it cannot use (set for another project, or on a
    machine that has JAX or PyTorch) is named, with a hint. It was ``ModuleNotFoundError: No
    module named 'jax'`` (``numpy`` and ``jax``), ``'torch'``, or ``ValueError: Unable to
    import backend : TensorFlow`` (the name is lower case), without a word of the variable."""
    try:
        import keras
    except (ImportError, ValueError) as err:
        backend = os.environ.get("KERAS_BACKEND")
        if not backend:
            raise
        from samri_ml.errors import SamriMLError

        cause = " ".join(f"{type(err).__name__}: {err}".split())
        raise SamriMLError(
            f"KERAS_BACKEND={backend}: Keras cannot use this backend ({cause}); hint: unset "
            "KERAS_BACKEND (TensorFlow, installed with samri_ml) or install the backend's "
            "package (jax, torch)") from err
    return keras


#: TensorFlow's distributions that install the same ``tensorflow/`` folder on Linux
TENSORFLOW_BUILDS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu")


def two_tensorflows_note(installed: dict[str, str]) -> str | None:
    """The note for a Python environment holding two of :data:`TENSORFLOW_BUILDS`
    (``installed``: distribution name -> version), or None.

    samri_ml depends on ``tensorflow-cpu`` on x86-64 Linux, so ``pip install samri_ml`` into a
    lab's environment with the GPU ``tensorflow`` adds ``tensorflow-cpu`` over the same
    folder: the one installed last wins, and nothing said that the GPU build may be gone.
    """
    both = sorted(name for name in installed if name in TENSORFLOW_BUILDS)
    if len(both) < 2:
        return None
    keep = "tensorflow" if "tensorflow" in both else both[0]
    names = " and ".join(f"{n} {installed[n]}" for n in both)
    drop = " ".join(n for n in both if n != keep)
    return (f"{names} are both installed, into one tensorflow/ folder: the one installed last "
            f"wins, so a GPU build may have been replaced by the CPU one; hint: to keep "
            f"{keep}: pip uninstall -y {drop} && pip install --force-reinstall --no-deps "
            f"'{keep}=={installed[keep]}' (and upgrade samri_ml with --no-deps)")


@functools.cache
def _note_two_tensorflows() -> None:
    """Say :func:`two_tensorflows_note` once per process, where it applies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    from importlib import metadata

    installed = {}
    for name in TENSORFLOW_BUILDS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    text = two_tensorflows_note(installed)
    if text:
        import warnings

        from samri_ml.errors import SamriMLNote

        warnings.warn(text, SamriMLNote, stacklevel=3)


def keras_load_failure(path, err: Exception, words: str = "cannot load the model") -> str:
    """One line for a ``.keras`` file that Keras failed to load: ``PATH: WORDS (CAUSE)``.

    A model saved by a newer Keras than the one installed is said as such, with a hint (Keras
    3.3-3.14 refused the shipped models, saved by 3.15, with the whole model configuration, some
    40 kB, in the message); otherwise the cause is Keras' innermost one, shortened.
    """
    import keras

    saved = _saved_keras_version(path)
    if saved and _version_key(saved) > _version_key(keras.__version__):
        return (f"{path}: cannot load the model (saved by Keras {saved}, this is Keras "
                f"{keras.__version__}); "
                f"hint: pip install -U 'keras>={saved}'")
    text = str(err)
    if "File not found" in text.split(". ")[0]:  # Keras' words for a file that is no .keras zip
        return f"{path}: {words} (not a .keras archive)"
    innermost = text.rsplit("Exception encountered:", 1)[-1].strip().splitlines()
    cause = f"{type(err).__name__}: {innermost[0] if innermost else ''}".rstrip(": ")
    return f"{path}: {words} ({cause if len(cause) <= 300 else cause[:297] + '...'})"


def _saved_keras_version(path) -> str | None:
    """The Keras version a ``.keras`` archive was saved by (its ``metadata.json``), or None."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json"))["keras_version"])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None


def saved_config(path) -> dict | None:
    """The model configuration a ``.keras`` archive holds (its ``config.json``'s ``config``:
    name, layers...), read without TensorFlow; None where ``path`` is no readable archive."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))["config"]
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None
    return config if isinstance(config, dict) else None


def _version_key(version: str) -> tuple[int, ...]:
    import re

    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


#: where the precision of the shipped networks' forward pass is chosen (``auto``, ``float32``,
#: ``bfloat16``); see :func:`inference_precision`
PRECISION_VARIABLE = "SAMRI_ML_PRECISION"
PRECISIONS = ("auto", "float32", "bfloat16")

#: layers whose arithmetic runs in bfloat16 in a :func:`bfloat16_copy`: the convolutions and
#: what lies between them, where the time goes. Dense heads, the embeddings' normalisation
#: and a model's output layer stay in float32.
BFLOAT16_LAYERS = frozenset({
    "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "AveragePooling2D",
    "UpSampling2D", "Concatenate", "Dropout", "Resizing",
})


def native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 natively (x86 ``avx512_bf16`` or ``amx_bf16``, read
    from ``/proc/cpuinfo``; elsewhere False). Without it oneDNN emulates bfloat16, slower
    than float32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def inference_precision() -> str:
    """``float32`` or ``bfloat16``: what loaded shipped networks compute in.

    ``$SAMRI_ML_PRECISION`` decides where set; ``auto`` (the default) is bfloat16 on the
    TensorFlow backend where the CPU has native bfloat16 (:func:`native_bfloat16`), float32
    elsewhere.
    """
    from samri_ml.errors import SamriMLError

    wanted = os.environ.get(PRECISION_VARIABLE, "auto").strip().lower() or "auto"
    if wanted not in PRECISIONS:
        raise SamriMLError(f"{PRECISION_VARIABLE}={wanted}: unknown precision; hint: one of "
                           f"{', '.join(PRECISIONS)}")
    if wanted != "auto":
        return wanted
    keras = import_keras()
    if keras.backend.backend() == "tensorflow" and native_bfloat16():
        return "bfloat16"
    return "float32"


def mark_for_inference(model, precision: str | None = None):
    """Let :func:`inference_fn` run ``model`` in ``precision`` (default:
    :func:`inference_precision`); in float32 with its batch normalisations folded into its
    convolutions (:func:`batchnorm_folded_copy`). For models loaded to predict: both copies
    take the weights once (again after ``set_weights`` or ``load_weights``), so a model being
    trained (unmarked, or compiled since it was marked) runs as it is, in float32. Returns
    the model.

    A network the loaders keep for every user of the process (:func:`mark_shared`:
    :func:`~samri_ml.masking.predict.load_model`, :attr:`PlateIdentifier.model
    <samri_ml.plates.identify.PlateIdentifier.model>`, kept per file and precision) is not
    marked with another precision: :class:`~samri_ml.errors.SamriMLError`, whose hint says
    how to load one in that precision. Marking it changed it for every later user: a
    notebook's masker marked float32 made a ``MaskBrain`` run of the same process float32
    (bfloat16 asked), and a benchmark's two precisions compared bfloat16 with itself."""
    precision = precision or inference_precision()
    if precision not in PRECISIONS[1:]:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS[1:])}")
    shared, loader = getattr(model, "_samri_ml_shared", (precision, ""))
    if precision != shared:
        from samri_ml.errors import SamriMLError

        raise SamriMLError(
            f"{model.name}: this {shared} network is loaded once for every user of the "
            f"process, so marking it {precision} would run theirs in {precision} too (a "
            f"MaskBrain run, an identifier made later); hint: load one in {precision}: "
            f"{loader.format(precision=repr(precision))}, or set SAMRI_ML_PRECISION="
            f"{precision} before loading")
    model._samri_ml_precision = precision
    return model


def checked_precision(precision: str | None) -> str:
    """``precision`` (``float32`` or ``bfloat16``), or :func:`inference_precision` for None;
    another value is refused (:class:`~samri_ml.errors.SamriMLError`) before a loader reads
    a network for it."""
    if precision is None:
        return inference_precision()
    if precision not in PRECISIONS[1:]:
        from samri_ml.errors import SamriMLError

        raise SamriMLError(f"precision {precision!r}: one of {', '.join(PRECISIONS[1:])}")
    return precision


def mark_shared(model, precision: str, loader: str):
    """:func:`mark_for_inference` of a network a loader keeps for every user of the process,
    per file and precision (``lru_cache``): marking it with another precision later is
    refused, since it would change it for all of them. ``loader``: how to load one in
    another ``{precision}``, for the refusal's hint. Returns the model."""
    mark_for_inference(model, precision)
    model._samri_ml_shared = precision, loader
    return model


#: the ``class_name`` of a functional model nested in a functional model's config
_NESTED_MODELS = ("Functional", "Model")


def _config_of(model) -> dict:
    """A functional model's config, a plain JSON copy (free to change: the model keeps its
    own)."""
    import json

    return json.loads(json.dumps(model.get_config()))


def _output_names(cfg: dict) -> set[str]:
    """The names of the output layers of one functional config."""
    heads = cfg.get("output_layers", [])
    if heads and isinstance(heads[0], str):  # one output: ["name", 0, 0], not a list of them
        heads = [heads]
    return {head[0] for head in heads}


def _functional_configs(config: dict, path: tuple = ()):
    """Each functional config in ``config`` (a functional model's) with its path, the names
    of the models it is nested in (``()``: ``config`` itself): nested ones before the one
    that holds them, so that a caller may change a config's ``layers`` once it has it (the
    copies made for inference, :func:`bfloat16_copy` and :func:`batchnorm_folded_copy`,
    walk a model's config this way)."""
    for layer in config["layers"]:
        if layer["class_name"] in _NESTED_MODELS:
            yield from _functional_configs(layer["config"], (*path, layer["config"]["name"]))
    yield config, path


def bfloat16_copy(model):
    """A copy of a functional Keras model whose :data:`BFLOAT16_LAYERS` compute in bfloat16
    (``mixed_bfloat16``: float32 weights, cast on use; the convolutions ``bfloat16``, their
    kernels and biases held in bfloat16); other layers and the output layers stay float32.
    Nested functional models are converted too.

    A convolution's weights are rounded to bfloat16 once, here, the same rounding a
    ``mixed_bfloat16`` one makes of its float32 weights on every call: the same outputs to
    the last bit (the plate ensemble on the 70 shared sections and their mirrors), without a
    cast of every kernel per call (4-6 % of the plate ensemble's time for a section and its
    mirror, 1-4 % for ten)."""
    config = _config_of(model)
    outputs = _output_names(config)
    for cfg, path in _functional_configs(config):
        for layer in cfg["layers"]:
            name, kind = layer["config"].get("name"), layer["class_name"]
            # the model's own outputs stay float32 (a nested model's feed the model)
            if kind in BFLOAT16_LAYERS and (path or name not in outputs):
                layer["config"]["dtype"] = "bfloat16" if kind == "Conv2D" else "mixed_bfloat16"
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _keras_histories(obj):
    """Every ``keras_history`` (``[layer name, node, tensor]``) in a layer's config."""
    if isinstance(obj, dict):
        if "keras_history" in obj:
            yield obj["keras_history"]
        for value in obj.values():
            yield from _keras_histories(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _keras_histories(value)


def _foldable(cfg: dict) -> dict[str, str]:
    """In one functional config: ``{batch normalisation: the Conv2D before it}`` for each
    BatchNormalization (last axis) whose only input is a linear channels-last Conv2D used by
    nothing else, neither of them a model output."""
    by_name = {layer["config"]["name"]: layer for layer in cfg["layers"]}
    uses: dict[str, int] = {}
    for layer in cfg["layers"]:
        for history in _keras_histories(layer.get("inbound_nodes", [])):
            uses[history[0]] = uses.get(history[0], 0) + 1
    outputs = _output_names(cfg)
    folds = {}
    for layer in cfg["layers"]:
        c = layer["config"]
        if layer["class_name"] != "BatchNormalization" or c["name"] in outputs \
                or c.get("axis") not in (-1, 3, [-1], [3]):
            continue
        sources = list(_keras_histories(layer.get("inbound_nodes", [])))
        conv = by_name.get(sources[0][0]) if len(sources) == 1 else None
        if conv is None or conv["class_name"] != "Conv2D":
            continue
        cc = conv["config"]
        if (uses.get(cc["name"]) == 1 and cc["name"] not in outputs
                and cc.get("data_format", "channels_last") == "channels_last"
                and cc.get("activation", "linear") == "linear"):
            folds[c["name"]] = cc["name"]
    return folds


def batchnorm_folded_copy(model):
    """A copy of a functional Keras model whose inference-mode BatchNormalization layers that
    follow a Conv2D directly are folded into it (nested functional models too); ``model``
    itself where there are none (the U-Net).

    ``BN(conv(x)) = s (W * x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)`` per
    output channel, so the convolution with ``W' = s W`` and ``b' = s (b - mean) + beta``
    (computed in float64) gives the same output in one op (float32: within 1e-7 of the
    plate ensemble's embeddings), and the four elementwise passes of each batch normalisation
    over the feature maps are gone: about a quarter of the plate ensemble's time (Keras runs
    a batch normalisation as separate ops, which TensorFlow does not fuse into the
    convolution)."""
    keras = import_keras()
    config = _config_of(model)
    folded: dict[tuple, tuple] = {}  # path of a Conv2D -> path of the BN folded into it
    for cfg, path in _functional_configs(config):
        folds = _foldable(cfg)
        if not folds:
            continue
        for layer in cfg["layers"]:
            if layer["config"]["name"] in folds.values():
                layer["config"]["use_bias"] = True
        cfg["layers"] = [layer for layer in cfg["layers"]
                         if layer["config"]["name"] not in folds]
        for history in _keras_histories(cfg["layers"]):
            history[0] = folds.get(history[0], history[0])
        folded.update({(*path, conv): (*path, bn) for bn, conv in folds.items()})
    if not folded:
        return model

    def layer_at(path):
        layer = model
        for name in path:
            layer = layer.get_layer(name)
        return layer

    def numpy64(variable):
        return keras.ops.convert_to_numpy(variable).astype("float64")

    def fill(copy, path):
        for layer in copy.layers:
            here = (*path, layer.name)
            if here in folded:
                conv, bn = layer_at(here), layer_at(folded[here])
                s = 1.0 / (numpy64(bn.moving_variance) + bn.epsilon) ** 0.5
                s = s * numpy64(bn.gamma) if bn.scale else s
                bias = numpy64(conv.bias) if conv.use_bias else 0.0
                beta = numpy64(bn.beta) if bn.center else 0.0
                layer.set_weights([(numpy64(conv.kernel) * s).astype("float32"),
                                   ((bias - numpy64(bn.moving_mean)) * s + beta)
                                   .astype("float32")])
            elif isinstance(layer, keras.Model):
                fill(layer, here)
            else:
                layer.set_weights(layer_at(here).get_weights())

    copy = model.__class__.from_config(config)
    fill(copy, ())
    return copy


class _WeightsWatch:
    """How often a marked model's weights were written since it was watched (``version``),
    and whether a traced function assigns them (``traced``: a training step compiled by
    TensorFlow, whose writes run without Python, so they cannot be counted).

    ``count`` counts the writes that go through a variable's write methods; ``in_place``
    holds the variables whose tensors count their own writes (PyTorch's: Keras' optimizers
    there add to ``variable.value`` in place with ``torch._foreach_add_``, past every Keras
    method, and so do ``torch.optim`` optimizers), read at each ``version``."""

    def __init__(self, in_place=()):
        self.count = 0
        self.traced = False
        self.in_place = tuple(in_place)

    @property
    def version(self):
        """What changes with every write: ``count``, with the in-place counters of
        ``in_place``'s tensors (``Tensor._version``) where there are any (PyTorch 2.13: 0.08
        us a variable, 20 us for 240 on this machine)."""
        if not self.in_place:
            return self.count
        return self.count, tuple(getattr(v._value, "_version", None) for v in self.in_place)


#: the methods of a TensorFlow variable that write it: Keras' ``assign`` (``set_weights``,
#: ``load_weights``, the batch normalisations' statistics) calls the first, Keras' optimizers
#: call them on the TensorFlow variable itself, past the Keras one
_TF_WRITES = ("assign", "assign_add", "assign_sub", "scatter_update", "scatter_add",
              "scatter_sub")


def _watch_weights(model) -> _WeightsWatch:
    """The :class:`_WeightsWatch` of ``model``'s weights (nested models' too), made at the
    first call: each write method of its variables (:data:`_TF_WRITES` on the TensorFlow
    backend, Keras' ``_direct_assign`` on the others) counts first, then writes. A copy made
    from the weights (:func:`batchnorm_folded_copy`, :func:`bfloat16_copy`) is current while
    the version is the one it was made at; checking that costs nothing per call on
    TensorFlow and JAX, where a checksum of the weights took 0.4-0.7 ms (the plate
    ensemble's 1.3 M weights, the U-Net's 0.5 M), 2-4 % of a plate section's time.

    What each backend's writes go through (Keras 3.15's source; the PyTorch and JAX cases
    were run with PyTorch 2.13 and JAX 0.10.2 on the CPU): on TensorFlow every write
    is one of :data:`_TF_WRITES` (optimizers call them on the ``tf.Variable``); on JAX,
    whose arrays cannot change in place, every write replaces the value through
    ``assign`` and ``_direct_assign`` (eager optimizers' ``assign_sub``, and after a jitted
    step the trainer's ``jax_state_sync`` or the caller's own ``assign``); on PyTorch the
    optimizers write the tensor in place, past ``_direct_assign``, so the tensors' own
    counters are read there (:class:`_WeightsWatch`). A write none of these sees (JAX's
    ``variable._value = ...`` by hand) leaves the copy as it was."""
    watch = getattr(model, "_samri_ml_weights_watch", None)
    if watch is not None:
        return watch
    keras = import_keras()
    backend = keras.backend.backend()
    watch = _WeightsWatch(model.weights if backend == "torch" else ())
    if backend == "tensorflow":
        import tensorflow as tf

        inside_trace = tf.inside_function
    else:  # JAX's trainers assign the new values after their jitted step
        def inside_trace():
            return False

    def counted(write):
        def call(*args, **kwargs):
            if inside_trace():
                watch.traced = True
            else:
                watch.count += 1
            return write(*args, **kwargs)

        return call

    for variable in model.weights:
        if backend == "tensorflow":
            target = variable.value  # the tf.Variable behind the Keras one
            for name in _TF_WRITES:
                setattr(target, name, counted(getattr(target, name)))
        else:
            variable._direct_assign = counted(variable._direct_assign)
    model._samri_ml_weights_watch = watch
    return watch


def inference_fn(model):
    """The model's forward pass in inference mode, compiled once per model.

    On the TensorFlow backend the graph of a ``tf.function`` with a dynamic batch dimension
    (one trace for any batch size): an eager call runs op by op, which costs ~0.1 s of Python
    overhead per call of the small plate CNN and ~30 % of the U-Net's time on a volume's
    slices. PyTorch's runs under ``torch.no_grad()``; other backends get the plain call. A
    model marked ``float32`` (:func:`mark_for_inference`) runs as its
    :func:`batchnorm_folded_copy`, one marked ``bfloat16`` as its :func:`bfloat16_copy`, made
    once here (a model that cannot be rebuilt from its config, e.g. with unregistered custom
    layers, runs as it is, in float32, with a note where bfloat16 was asked); the output is
    float32 either way. A marked model whose weights were assigned since its copy was made (``set_weights``, ``load_weights``), or
    marked again with another precision, gets a new copy in place of the old one
    (:func:`_watch_weights`); one compiled since (being trained), or trained by a
    traced step of a loop of its own, runs as it is, with its current weights, as an
    unmarked one.

    Raises :class:`~samri_ml.errors.SamriMLError` in a process forked from one that had
    imported TensorFlow (:func:`refuse_inherited_tensorflow`), where the forward pass would
    hang for ever, also for a model compiled before the fork.
    """
    refuse_inherited_tensorflow()
    keras = import_keras()

    precision = getattr(model, "_samri_ml_precision", None)
    # a copy takes the weights once: a marked model whose weights were assigned since
    # (set_weights, load_weights) gets a new copy, one compiled since (an optimizer: being
    # trained, e.g. fine-tuned in a notebook) or trained by a traced step of its own loop
    # runs as it is, as an unmarked one
    watch = _watch_weights(model) if precision else None
    training = getattr(model, "optimizer", None) is not None or bool(watch and watch.traced)
    key = (id(model), training)  # the cache holds the model too, so the id is never reused
    precision = None if training else precision
    # the precision too: a model marked again with another one (a notebook comparing float32
    # with bfloat16 on one loaded model) kept running the copy of its first mark; its entry
    # is replaced, so the old copy is let go
    made_for = (precision, None if training or watch is None else watch.version)
    if training:
        _FNS.pop((id(model), False), None)
    if key not in _FNS or _FNS[key][2] != made_for:
        net = model
        # folded where marked float32 only: a model being trained (unmarked) keeps its own
        # weights, which a copy would not follow; in bfloat16 the folded kernels round
        # otherwise (the shipped plate ensemble's distances moved by up to 0.006 and the
        # order of near plates of 67 of the 70 shared sections changed, Top-1 the same)
        if precision == "float32":
            try:
                net = batchnorm_folded_copy(model)
            except Exception:  # noqa: BLE001 - not rebuilt from its config: runs unfolded
                net = model
        if precision == "bfloat16":
            try:
                net = bfloat16_copy(model)
            except Exception as err:  # Keras raises many types for a config it cannot rebuild
                import warnings

                from samri_ml.errors import SamriMLNote

                warnings.warn(f"{model.name}: runs in float32, not bfloat16 (cannot copy it: "
                              f"{type(err).__name__})", SamriMLNote, stacklevel=2)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
            # autograph=False: nothing to convert (no Python control flow), and the file it
            # writes into TMPDIR for the conversion stayed there after every masking step of
            # samri_ml-register (its workers end without Python's exit handlers)
            graph = tf.function(lambda x: tf.cast(net(x, training=False), tf.float32),
                                input_signature=[spec], autograph=False).get_concrete_function()
            # the traced graph called directly: a tf.function call first binds and checks
            # its arguments in Python (0.5-1 ms, about a twentieth of a plate section's time)
            fn = lambda x: graph(tf.convert_to_tensor(x, tf.float32))  # noqa: E731
        elif keras.backend.backend() == "torch":
            import torch

            def fn(x):
                # without autograd's record of the pass: a plate network's evaluation during
                # training on a GPU (ResNet101V2, 224 px, batches of 64) ran out of memory
                with torch.no_grad():
                    return keras.ops.cast(net(x, training=False), "float32")
        else:
            fn = lambda x: keras.ops.cast(net(x, training=False), "float32")  # noqa: E731
        _FNS[key] = (model, fn, made_for)
    return _FNS[key][1]


def tensorflow_inherited() -> bool:
    """Whether this process was forked from one that had imported TensorFlow.

    TensorFlow's thread pools do not survive a fork: a network run in such a child hangs for
    ever (a Python session that masked or ranked an image, then ran a Nipype workflow with
    ``MaskBrain`` or ``IdentifyPlate`` under MultiProc, whose workers are forked from it). The
    interfaces then run their work in a new interpreter (:func:`run_in_new_process`); the
    Python API refuses there (:func:`refuse_inherited_tensorflow`). Set at fork time by
    ``samri_ml/__init__.py`` (``os.register_at_fork``): TensorFlow merely imported before the
    fork is enough for a network to hang in the child.
    """
    import samri_ml

    return samri_ml._TENSORFLOW_BEFORE_FORK


#: why the Python API refuses to run a network in a forked process, and what to do instead
FORKED_MESSAGE = (
    "TensorFlow cannot run in a process forked from one that had already imported it (it "
    "would hang for ever); hint: run the workflow with the Linear plugin, or start the "
    "workers with a 'forkserver' or 'spawn' multiprocessing context (MultiProc: "
    "plugin_args={'mp_context': 'forkserver'}), or use the samri_ml interfaces MaskBrain and "
    "IdentifyPlate, which run the network in a new interpreter there")


def refuse_inherited_tensorflow() -> None:
    """Raise :class:`~samri_ml.errors.SamriMLError` (:data:`FORKED_MESSAGE`) where
    :func:`tensorflow_inherited`: loading or running a network there hangs for ever (a lab's
    own Nipype Function node calling :func:`~samri_ml.masking.predict.predict_mask` under
    MultiProc, or a ``multiprocessing`` fork pool, after TensorFlow ran in the parent)."""
    if tensorflow_inherited():
        from samri_ml.errors import SamriMLError

        raise SamriMLError(FORKED_MESSAGE)


def file_checksum(path) -> str:
    """``<size>:<sha256>`` of a file's content (computed once per path, size, inode,
    modification and change time): the model's part of a Nipype cache key, so that other
    weights (a samri_ml upgrade, or a model file replaced under the same name and time)
    invalidate cached results."""
    st = os.stat(path)
    # the change time too: a file rewritten with its old size and modification time
    return _file_checksum(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino,
                          st.st_ctime_ns)


def embedding_library_versions() -> dict:
    """The versions of the libraries that shape an embedding, beside the model and the code:
    Keras, its backend (``tensorflow 2.21.0``, or JAX's, PyTorch's...), OpenCV (the
    decoding, the CLAHE and the resize of :func:`~samri_ml.plates.data.preprocess`), NumPy
    (its percentiles turn a 16-bit, float or colour plate into the 8-bit grey the network
    sees, and decide whether a plate is brightfield, so inverted) and SimpleITK (it decodes
    the TIFFs OpenCV cannot: :func:`~samri_ml.plates.data.read_image`; its installed
    version, read without importing it, a second). Part of the atlas index cache's key: an
    index made under one version was read back under another. SciPy is not in it: it
    shapes no plate (the modality router, which uses it, routes sections)."""
    import importlib
    from importlib import metadata

    import cv2
    import numpy as np

    keras = import_keras()
    backend = keras.backend.backend()
    try:
        backend_version = getattr(importlib.import_module(backend), "__version__", "unknown")
    except ImportError:  # a backend whose name is not its module's
        backend_version = "unknown"
    try:
        simpleitk = metadata.version("SimpleITK")
    except metadata.PackageNotFoundError:
        simpleitk = "not installed"
    return {"keras": keras.__version__, "backend": f"{backend} {backend_version}",
            "opencv": cv2.__version__, "numpy": np.__version__, "simpleitk": simpleitk}


def input_checksum(path) -> str:
    """:func:`file_checksum` of an interface's model or index file, or ``unreadable`` where it
    cannot be read (gone: Nipype's own check of the input says so)."""
    try:
        return file_checksum(path)
    except OSError:
        return "unreadable"


def named_checksum(in_file=None) -> str:
    """``<path> <size>:<sha256>`` of an interface's input file (of each, ``; ``-joined, for a
    MapNode's list of them; ``""`` without one), for its cache key. Nipype's key holds a File
    input's size and modification time, not its path: a file renamed (``mv 99.png 74.png``,
    ``mv sub-1_T2w.nii.gz sub-01_T2w.nii.gz``) kept its cached result, keyed and named by the
    old path, and two files of one size and time swapped (uncompressed TIFFs or NIfTIs from an
    archive) kept each other's results."""
    from nipype.interfaces.base import isdefined

    if not isdefined(in_file) or in_file is None:
        return ""
    files = in_file if isinstance(in_file, list | tuple) else [in_file]
    return "; ".join(f"{f} {input_checksum(f)}" for f in files)


#: files whose checksum a process keeps: an atlas of 132 plates (or several atlases) and the
#: models; 64 held less than one atlas, so each atlas signature hashed all of it again. An
#: entry is some 200 bytes
FILE_CHECKSUMS_KEPT = 4096


@functools.lru_cache(maxsize=FILE_CHECKSUMS_KEPT)
def _file_checksum(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{size}:{digest.hexdigest()}"


#: the line of a child's stdout that carries :func:`run_in_new_process`'s result
RESULT_MARK = "samri_ml-result: "


def run_in_new_process(module: str, function: str, kwargs: dict) -> dict:
    """``module.function(**kwargs)`` in a new Python interpreter; returns its (JSON) dict.

    For work that needs TensorFlow in a process forked from one that had it already
    (:func:`tensorflow_inherited`). A :class:`~samri_ml.errors.SamriMLError` in the child is
    raised here as the same error; any other failure as a RuntimeError with the child's last
    line."""
    import json
    import subprocess

    code = ("import json, sys, importlib; f = getattr(importlib.import_module(sys.argv[1]), "
            "sys.argv[2]); print(sys.argv[4] + json.dumps(f(**json.loads(sys.argv[3]))))")
    proc = subprocess.run([sys.executable, "-c", code, module, function, json.dumps(kwargs),
                           RESULT_MARK], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        cause = _child_failure(proc.returncode, proc.stderr)
        ours = _samri_ml_error(cause)
        if ours is not None:
            # the child's own one line, as the node gives it without a fork: a crash file
            # said "RuntimeError: samri_ml.interfaces.masking.mask_files in a new process
            # failed: samri_ml.errors.SamriMLError: ..." for the same cause only where the
            # session had imported TensorFlow before the run
            raise ours
        raise RuntimeError(f"{module}.{function} in a new process failed: {cause}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"{module}.{function} in a new process gave no result")


#: how a child's last line of stderr begins where it failed with a samri_ml error
_SAMRI_ML_ERROR = re.compile(r"samri_ml\.errors\.(SamriML\w*Error): ")


def _samri_ml_error(line: str) -> Exception | None:
    """The samri_ml error (of its own class: :class:`~samri_ml.errors.SamriMLValueError` stays
    a ``ValueError``) that a child's last line of stderr gives, or None for any other line."""
    from samri_ml import errors

    found = _SAMRI_ML_ERROR.match(line)
    kind = getattr(errors, found.group(1), None) if found else None
    if not (isinstance(kind, type) and issubclass(kind, errors.SamriMLError)):
        return None
    return kind(line[found.end():])


def _child_failure(returncode: int, stderr: str) -> str:
    """What :func:`run_in_new_process` says of a failed child: its last line of stderr (a
    samri_ml error's one line), and where a signal ended it, which (the out-of-memory killer's
    SIGKILL leaves no message at all)."""
    import signal

    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    if returncode >= 0:
        return last or f"exit code {returncode} (no message)"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "an unknown signal"
    why = f"killed by {name} (signal {number}"
    why += "; out of memory?)" if number == signal.SIGKILL else ")"
    return f"{why}; its last message: {last}" if last else why
