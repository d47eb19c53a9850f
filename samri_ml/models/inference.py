"""Fast forward passes of the shipped networks (shared by the masker and the plate ranker)."""

from __future__ import annotations

import os
import sys

_FNS: dict = {}


def import_keras():
    """``import keras`` (and TensorFlow) without the C++ start-up lines on stderr.

    TensorFlow 2.21 prints ``WARNING: All log messages before absl::InitializeLog() ...`` and
    ``oneDNN custom operations are on ...`` from C++ while it is imported, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says, so a command's one-line error came after four lines of
    noise. Those lines are dropped by pointing file descriptor 2 at /dev/null for the import
    only (Python errors of the import still raise normally). ``SAMRI_ML_TF_LOGS=1`` keeps them.
    """
    if "keras" in sys.modules or os.environ.get("SAMRI_ML_TF_LOGS") == "1":
        import keras

        return keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no file descriptor 2 (an embedded interpreter): plain import
        import keras

        return keras
    os.dup2(null, 2)
    try:
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)
    return keras


def inference_fn(model):
    """The model's forward pass in inference mode, compiled once per model.

    On the TensorFlow backend a ``tf.function`` with a dynamic batch dimension (one trace for
    any batch size): an eager call runs op by op, which costs ~0.1 s of Python overhead per call
    of the small plate CNN and ~30 % of the U-Net's time on a volume's slices. Other backends
    get the plain call.
    """
    keras = import_keras()

    key = id(model)  # the cached function holds the model, so the id is never reused
    if key not in _FNS:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
            _FNS[key] = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        else:
            _FNS[key] = lambda x: model(x, training=False)
    return _FNS[key]
