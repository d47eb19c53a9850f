"""Registration QC as pure functions: Volume and Smoothness Conservation, comparing workflows.

- :mod:`samri_ml.qc.volume`: voxel volume, thresholded volume, VCF;
- :mod:`samri_ml.qc.smoothness`: 3dFWHMx-style FWHM (classic and ACF), SCF;
- :mod:`samri_ml.qc.metrics`: the per-scan QC record (JSON/TSV) and its file names;
- :mod:`samri_ml.qc.compare`: statistics, tables and violin plots across workflows.
"""

from samri_ml.qc.smoothness import Smoothness, estimate_smoothness, smoothness_conservation
from samri_ml.qc.volume import VolumeConservation, volume_conservation, voxel_volume

__all__ = [
    "Smoothness",
    "VolumeConservation",
    "estimate_smoothness",
    "smoothness_conservation",
    "volume_conservation",
    "voxel_volume",
]
