"""Statistics of ``samri_ml.qc.compare`` (properties with hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samri_ml.qc.compare import anova_table, bootstrap_ci, pairwise_table, rmse_from_one

samples = st.lists(st.floats(0.5, 1.5), min_size=2, max_size=40)


@settings(max_examples=50, deadline=None)
@given(samples)
def test_bootstrap_ci_brackets_the_mean(values):
    lo, hi = bootstrap_ci(np.array(values))
    mean = float(np.mean(values))
    assert min(values) - 1e-12 <= lo <= mean + 1e-9
    assert mean - 1e-9 <= hi <= max(values) + 1e-12


@settings(max_examples=50, deadline=None)
@given(samples, st.floats(0.01, 10))
def test_rmse_scales_with_the_deviation(values, k):
    """RMSE of (1 - x) scales linearly when every deviation from 1 is scaled."""
    v = np.array(values)
    assert rmse_from_one(1 + k * (v - 1)) == pytest.approx(
        k * rmse_from_one(v), rel=1e-9, abs=1e-12
    )


def _group(vcfs, name):
    return [{"scan": f"s{i}", "modality": "anat", "vcf": v, "scf": 1.0 + 0.01 * i,
             "scf_normalised": 1.0} for i, v in enumerate(vcfs)]  # fmt: skip


def test_statistics_detect_a_shrinking_workflow():
    rng = np.random.default_rng(1)
    groups = {
        "good": _group(1 + 0.01 * rng.standard_normal(10), "good"),
        "shrinks": _group(0.9 + 0.01 * rng.standard_normal(10), "shrinks"),
    }
    anova = {r["quantity"]: r for r in anova_table(groups)}
    assert anova["vcf_dev"]["p"] < 1e-6
    pair = {r["quantity"]: r for r in pairwise_table(groups)}["vcf_dev"]
    assert pair["a"] == "good" and pair["welch_p"] < 1e-6 and pair["paired_p"] < 1e-6
    assert pair["n_paired"] == 10
    assert pair["rmse_ratio"] < 0.2
    # identical SCF in both: no evidence of a difference
    assert anova["scf_dev"]["p"] == pytest.approx(1.0)
