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


def test_repeated_measures_f_sees_what_the_one_way_test_misses():
    """Three workflows on the same 8 scans, the second and third moving every scan a little
    closer to 1: the one-way F-test (independent groups) drowns it in the scans' own spread;
    the repeated-measures test does not (checked by hand: F = 11.47 with 2 and 14 df)."""
    from samri_ml.qc.compare import matched_values, repeated_measures_f

    rng = np.random.default_rng(3)
    base = 1 + 0.3 * rng.standard_normal(8)
    shift = [0.0, 0.03, 0.05]
    groups = {w: _group(1 + (base - 1) * (1 - s) + 0.005 * rng.standard_normal(8), w)
              for w, s in zip("ABC", shift, strict=True)}
    anova = {r["quantity"]: r for r in anova_table(groups)}["vcf_dev"]
    assert anova["p"] > 0.5 and anova["p_rm"] < 0.01 and anova["n_matched"] == 8
    x = matched_values(groups, "vcf_dev")
    assert x.shape == (8, 3)
    # against the textbook decomposition
    n, k = x.shape
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    f_hand = (n * ((x.mean(0) - x.mean()) ** 2).sum() / (k - 1)) / \
        ((resid ** 2).sum() / ((k - 1) * (n - 1)))
    assert repeated_measures_f(x)[0] == pytest.approx(f_hand, rel=1e-10)
    assert np.isnan(repeated_measures_f(x[:1])[0])


def test_holm_adjustment():
    from samri_ml.qc.compare import holm

    got = holm([0.01, 0.04, float("nan"), 0.03])
    assert got[0] == pytest.approx(0.03) and got[3] == pytest.approx(0.06)
    assert got[1] == pytest.approx(0.06) and np.isnan(got[2])  # monotone: max(0.04*1, 0.06)
    pair = pairwise_table({"a": _group([1.0, 1.1, 0.9], "a"), "b": _group([1.2, 1.0, 0.8], "b"),
                           "c": _group([1.0, 1.05, 0.95], "c")})
    assert all(r["welch_p_holm"] >= r["welch_p"] for r in pair if np.isfinite(r["welch_p"]))


def test_the_paired_test_and_the_repeated_measures_f_agree_on_a_constant_difference():
    """Every scan's |1-VCF| 0.0486 apart give or take rounding (2e-16): the repeated-measures
    F said n/a (no residual variance) while the paired t-test of the same report said
    t = -1e15, p = 1e-74. Both now judge the residual alike; the scipy warning of all-alike
    values (one workflow's SCF all 1.0) is not printed raw."""
    import warnings

    rng = np.random.default_rng(3)
    base = 0.8 + 0.05 * rng.random(8)
    groups = {"a": _group(base, "a"), "b": _group(base - 0.0486, "b")}
    for rec in groups["b"]:
        rec["scf"] = 1.0
    anova = {r["quantity"]: r for r in anova_table(groups)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pair = {r["quantity"]: r for r in pairwise_table(groups)}
    assert np.isnan(anova["vcf_dev"]["p_rm"]), anova["vcf_dev"]
    assert np.isnan(pair["vcf_dev"]["paired_t"]) and np.isnan(pair["vcf_dev"]["paired_p"])
    assert pair["vcf_dev"]["n_paired"] == 8


def test_the_paired_test_gives_the_difference_it_tests():
    """Workflow b has a scan a lacks, |1-VCF| 0.30: the table gave mean_a 0.053 below mean_b
    0.088 beside a paired t of +0.21 (a worse on the 7 scans both have), and the difference
    that t is of nowhere. ``paired_diff`` is the mean of a - b over the paired scans (scipy's
    paired t of it checked), given too where the difference is constant and t is n/a."""
    from scipy import stats

    rng = np.random.default_rng(3)
    va = 1 + 0.05 * rng.standard_normal(8)
    vb = va + 0.02 + 0.01 * rng.standard_normal(8)
    ra, rb = _group(va[:7], "a"), _group(vb[:7], "b")
    rb.append({"scan": "s9", "modality": "anat", "vcf": 1.3, "scf": 1.0, "scf_normalised": 1.0})
    pair = {r["quantity"]: r for r in pairwise_table({"a": ra, "b": rb})}["vcf_dev"]
    da, db = np.abs(1 - va[:7]), np.abs(1 - vb[:7])
    assert pair["n_paired"] == 7
    assert pair["paired_diff"] == pytest.approx(np.mean(da - db), rel=1e-12)
    assert pair["paired_t"] == pytest.approx(stats.ttest_rel(da, db).statistic, rel=1e-12)
    assert (pair["paired_diff"] > 0) == (pair["paired_t"] > 0) != (pair["mean_a"]
                                                                  > pair["mean_b"])
    # every scan 0.0486 apart: no t (no residual variance), the difference all the same
    base = 0.8 + 0.05 * rng.random(8)
    pair = {r["quantity"]: r for r in pairwise_table(
        {"a": _group(base, "a"), "b": _group(base - 0.0486, "b")})}["vcf_dev"]
    assert np.isnan(pair["paired_t"]) and pair["paired_diff"] == pytest.approx(-0.0486)


def test_a_label_with_a_bar_keeps_its_markdown_row():
    """A workflow label with '|' added a column to its row of qc_stats.md."""
    from samri_ml.qc.compare import markdown_table

    table = markdown_table([{"workflow": "a|b", "n": 3}]).splitlines()
    assert table[2] == "| a\\|b | 3 |"


def test_a_quantity_unmeasured_everywhere_does_not_say_the_workflows_share_no_scans(tmp_path):
    """With every SCF null, SCF's n_matched was 0 and the note said the workflows share no
    scans and every matched test is n/a, beside a VCF repeated-measures p of 1e-7."""
    import json

    from samri_ml.qc.compare import compare_workflows

    rng = np.random.default_rng(0)
    folders = []
    for name, shift in (("w1", 0.0), ("w2", 0.05)):
        for i in range(8):
            d = tmp_path / name / f"sub-{i:02d}" / "anat"
            d.mkdir(parents=True)
            (d / f"sub-{i:02d}_desc-qc_metrics.json").write_text(json.dumps(
                {"scan": f"sub-{i:02d}_T2w", "modality": "anat", "workflow": name,
                 "vcf": 0.9 - shift + 0.01 * rng.standard_normal(), "scf": None,
                 "scf_normalised": None}))
        folders.append(tmp_path / name)
    result = compare_workflows(folders)
    assert "share 0 scan(s)" not in result["markdown"]
    assert {r["quantity"]: r["n_matched"] for r in result["anova"]}["vcf_dev"] == 8


def test_a_scan_one_workflow_has_no_record_of_is_named(tmp_path):
    """A subject one workflow failed on (no record written) was in the other workflow's mean,
    RMSE, F-test and Welch test, out of its own, and nothing said so."""
    import json

    from samri_ml.qc.compare import compare_workflows

    rng = np.random.default_rng(0)
    for name, subjects in (("w1", range(7)), ("w2", [0, 1, 2, 4, 5, 6])):
        for i in subjects:
            d = tmp_path / name / f"sub-{i:02d}" / "anat"
            d.mkdir(parents=True)
            (d / f"sub-{i:02d}_desc-qc_metrics.json").write_text(json.dumps(
                {"scan": f"sub-{i:02d}_T2w", "modality": "anat", "workflow": name,
                 "vcf": 0.95 + 0.01 * rng.standard_normal(), "scf": 1.1,
                 "scf_normalised": 1.1}))
    result = compare_workflows([tmp_path / "w1", tmp_path / "w2"])
    assert "w2 lacks 1: sub-03_T2w (anat)" in result["markdown"]
    # the RMSE ratio too (w1's with sub-03, w2's without), which the note left out
    assert ("the means, the RMSE ratios, the F-test and the Welch tests count each "
            "workflow's own scans") in result["markdown"]
    assert "w1 lacks" not in result["markdown"]
    # the same scans in both: no such note
    (tmp_path / "w1" / "sub-03").rename(tmp_path / "sub-03")
    assert "lacks" not in compare_workflows([tmp_path / "w1", tmp_path / "w2"])["markdown"]
