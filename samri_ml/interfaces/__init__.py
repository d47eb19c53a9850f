"""Thin Nipype interfaces (inputs -> files); the maths lives in samri_ml.qc, .plates, .masking.

    from samri_ml.interfaces import MaskBrain, IdentifyPlate, VolumeConservation, SmoothnessConservation

Each name is imported on first use, so importing this package stays cheap (no TensorFlow).
"""

from importlib import import_module

_WHERE = {
    "MaskBrain": "samri_ml.interfaces.masking",
    "IdentifyPlate": "samri_ml.interfaces.plates",
    "VolumeConservation": "samri_ml.interfaces.qc",
    "SmoothnessConservation": "samri_ml.interfaces.qc",
    "WriteQCMetrics": "samri_ml.interfaces.qc",
    "DropDummyScans": "samri_ml.interfaces.func",
    "SliceTimeCorrection": "samri_ml.interfaces.func",
    "TemporalMean": "samri_ml.interfaces.func",
    "DerivativesDataSink": "samri_ml.interfaces.bids",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'samri_ml.interfaces' has no attribute {name!r}")


def __dir__():  # tab completion offers the lazy names too
    return sorted({*globals(), *__all__})
