"""Nipype workflow factories (``init_*_wf``)."""

from samri_ml.workflows.generic import init_generic_wf
from samri_ml.workflows.registration import init_functional_wf, init_structural_wf
from samri_ml.workflows.resources import request_slurm_resources

__all__ = ["init_generic_wf", "init_structural_wf", "init_functional_wf",
           "request_slurm_resources"]
