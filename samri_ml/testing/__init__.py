"""Helpers for samri_ml's own tests and CI (a local SLURM cluster); not needed at run time."""
