"""samri_ml: ML brain masking, SAMRI-style registration and atlas-plate identification."""

__version__ = "0.1.0"
