"""samri_ml: ML brain masking, SAMRI-style registration and atlas-plate identification."""

__version__ = "0.2.0"

import os as _os
import sys as _sys

#: whether this process was forked from one that had imported TensorFlow (see
#: :func:`samri_ml.models.inference.tensorflow_inherited`)
_TENSORFLOW_BEFORE_FORK = False


def _note_fork() -> None:
    global _TENSORFLOW_BEFORE_FORK
    _TENSORFLOW_BEFORE_FORK = "tensorflow" in _sys.modules


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_note_fork)
