"""Comparing workflows by their per-scan QC records: tables, statistics and violin plots.

Reproduces the analysis of SAMRI's registration paper (its Fig. 3): for every workflow the
distribution of the Volume and Smoothness Conservation Factors over scans, an F-test across
workflows (and a repeated-measures one, as the workflows ran on the same scans), pairwise
two-tailed tests (Holm-adjusted too) and RMSE ratios.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np

from samri_ml.bids import atomic_targets
from samri_ml.errors import FULL_DISK_ERRNOS, SamriMLError
from samri_ml.qc.metrics import (
    AXES_KEY,
    COVERAGE_KEY,
    LABEL_KEYS,
    METHOD_KEY,
    PARTIAL_FOV,
    QC_SUFFIX,
    TABLE_COLUMNS,
    VALUE_KEYS,
    data_dictionary,
)

#: Quantities compared across workflows: name -> (record key, transform, label).
#: Deviations |1 - x| measure how far a factor is from perfect conservation (1).
QUANTITIES = {
    "vcf_dev": ("vcf", lambda x: np.abs(1.0 - x), "abs(1-VCF)"),
    "scf_dev": ("scf", lambda x: np.abs(1.0 - x), "abs(1-SCF)"),
    "scf_normalised": ("scf_normalised", lambda x: x, "SCF/VCF^(1/3)"),
}
#: Factors whose RMSE of (1 - x) is compared pairwise.
FACTORS = ("vcf", "scf", "scf_normalised")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def workflow_label(folder: str | Path) -> str:
    """Label of a derivatives folder: dataset_description.json "Name", else the folder name."""
    folder = Path(folder)
    desc = folder / "dataset_description.json"
    if desc.is_file():
        try:
            name = json.loads(desc.read_text()).get("Name")
        except (OSError, ValueError):
            name = None
        if isinstance(name, str) and name.strip():
            return name.strip()
    return folder.resolve().name


#: below this many scans per workflow the comparison's markdown opens with a caution
MIN_SCANS_FOR_STATISTICS = 5


def default_labels(folders) -> list[str]:
    """Labels of several derivatives folders: :func:`workflow_label` of each; where two share
    one (every ``samri_ml-register`` output is named "samri_ml registration"), the folder
    names; where these repeat too, the paths as given."""
    for labels in ([workflow_label(f) for f in folders],
                   [Path(f).resolve().name for f in folders]):
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def space_of(path: str | Path) -> str:
    """The ``space-`` entity of a file name (the template a scan was registered to), or ''."""
    for part in Path(path).name.split("_"):
        if part.startswith("space-"):
            return part[len("space-"):]
    return ""


def _dataset_roots(folder: Path, files: list[Path]) -> set[Path]:
    """For each file, its nearest folder (``folder`` or below) with a
    ``dataset_description.json``; ``folder`` itself where there is none."""
    roots = set()
    for f in files:
        root = folder
        for parent in f.parents:
            if parent == folder or folder not in parent.parents:
                break
            if (parent / "dataset_description.json").is_file():
                root = parent
                break
        roots.add(root)
    return roots


def read_qc_folder(folder: str | Path, label: str | None = None,
                   space: str | None = None) -> list[dict]:
    """Read every ``*_desc-qc_metrics.json`` under a derivatives folder (recursively).

    Files under ``sub-*/`` folders are used when there are any (the BIDS-Derivatives layout),
    otherwise all files found. With ``space``, only the files of that template
    (``space-<label>`` in their names).

    Each record gets ``workflow`` = ``label`` (default :func:`workflow_label`), ``space`` and
    ``path``.

    Raises
    ------
    SamriMLError
        The folder does not exist, holds no QC files, or a file is not a QC record; it holds
        several derivatives datasets (a folder above the workflows' outputs: their scans were
        pooled as one workflow), or QC files of several templates and no ``space`` is given
        (they were pooled, and paired on their scan names alone).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SamriMLError(f"{folder}: no such folder")
    label = label or workflow_label(folder)
    files = sorted(folder.rglob(f"*_{QC_SUFFIX}.json"))
    # BIDS-Derivatives keep them under sub-*/; elsewhere (e.g. a Nipype work folder inside the
    # output folder) they would be counted twice
    in_subjects = [f for f in files if f.relative_to(folder).parts[0].startswith("sub-")]
    files = in_subjects or files
    if not files:
        raise SamriMLError(
            f"{folder}: no *_{QC_SUFFIX}.json files; hint: run the workflow with QC, or "
            "`samri_ml-qc scan PROCESSED RAW --json sub-X_..._desc-qc_metrics.json`"
        )
    roots = _dataset_roots(folder, files)
    if len(roots) > 1:
        names = ", ".join(sorted(str(r.relative_to(folder)) for r in roots))
        raise SamriMLError(f"{folder} holds {len(roots)} derivatives datasets ({names}); "
                           "hint: give each one as its own DERIV_DIR")
    spaces = sorted({space_of(f) for f in files})
    if space is not None:
        files = [f for f in files if space_of(f) == space]
        if not files:
            raise SamriMLError(f"{folder}: no QC files in space '{space}' (there: "
                               f"{', '.join(s or 'none' for s in spaces)})")
    elif len(spaces) > 1:
        raise SamriMLError(f"{folder}: QC files of {len(spaces)} templates (space "
                           f"{', '.join(s or 'none' for s in spaces)}); hint: compare one at a "
                           "time with --space LABEL")
    records = []
    seen: dict[tuple, Path] = {}
    # one damaged record of many stopped the comparison with no way on
    remake = ("hint: write it again (rerun the samri_ml-register command that wrote it, same "
              "-w: it restores a derivative that differs; or samri_ml-qc scan PROCESSED RAW "
              "--json FILE), or move it out of the folder")
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SamriMLError(f"{path}: not a readable JSON file ({err}); {remake}") from err
        if not isinstance(data, dict) or "vcf" not in data:
            raise SamriMLError(f"{path}: not a QC record (no 'vcf' key); {remake}")
        rec = {k: data.get(k) for k in LABEL_KEYS}
        rec.update({k: _measured(data.get(k), path, k) for k in VALUE_KEYS})
        rec[METHOD_KEY] = data.get(METHOD_KEY)  # None: a record that predates the key
        left_out = data.get(AXES_KEY)
        # None: a record that predates the key (unknown), as METHOD_KEY
        rec[AXES_KEY] = [str(a) for a in left_out] if isinstance(left_out, list) else None
        # None: not measured (no template mask given), or a record that predates the key
        rec[COVERAGE_KEY] = _measured(data.get(COVERAGE_KEY), path, COVERAGE_KEY)
        rec["scan"] = rec["scan"] or path.name.replace(f"_{QC_SUFFIX}.json", "")
        rec["modality"] = rec["modality"] or ""
        rec["workflow"] = label
        rec["space"] = space_of(path)
        rec["path"] = str(path)
        if _key(rec) in seen:
            # a copy (an older run's, kept in a subfolder) was counted as a second scan in the
            # workflow's n, mean and Welch test, and one of the two was paired
            kind = rec["modality"] or "no modality"
            raise SamriMLError(f"{path}: a second QC record of {rec['scan']} ({kind}) in "
                               f"{folder}, beside {seen[_key(rec)]}; hint: keep one")
        seen[_key(rec)] = path
        records.append(rec)
    return records


def _measured(value, path: Path, key: str) -> float | None:
    """A record's value as the statistics take it: a float, or None where it was not measured
    (null, or a NaN or Infinity that Python's json writes and reads: it left the scan out of the
    repeated-measures test but in the paired one, which then came out n/a for every scan)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamriMLError(f"{path}: {key} {json.dumps(value)} is not a number; hint: give a "
                           "number, or null where it could not be measured")
    return float(value) if math.isfinite(value) else None


def _values(records: list[dict], quantity: str) -> np.ndarray:
    key, fn, _ = QUANTITIES[quantity]
    vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in records])
    vals = vals[np.isfinite(vals)]
    return fn(vals)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    .. math:: \\mathrm{CI} = [q_{(1-\\ell)/2}, q_{(1+\\ell)/2}]\\ \\text{of}\\
              \\{\\bar{x}^{*b}\\}_{b=1}^{B}

    with :math:`\\bar{x}^{*b}` the mean of a resample with replacement, B = ``n_boot``. ``nan``
    for fewer than 2 values.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def rmse_from_one(values: np.ndarray) -> float:
    """Root-mean-square deviation from perfect conservation.

    .. math:: \\mathrm{RMSE} = \\sqrt{\\tfrac{1}{n}\\sum_i (1 - x_i)^2}
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.sqrt(np.mean((1.0 - values) ** 2))) if values.size else float("nan")


def summary_table(groups: dict[str, list[dict]]) -> list[dict]:
    """One row per workflow: n (its scans) and, per quantity, the scans with a measured value
    (``<quantity>_n``: a record's null, a value that could not be measured, is left out),
    their mean and bootstrapped 95% CI."""
    rows = []
    for wf, recs in groups.items():
        row = {"workflow": wf, "n": len(recs)}
        for q in QUANTITIES:
            vals = _values(recs, q)
            lo, hi = bootstrap_ci(vals)
            row[f"{q}_n"] = int(vals.size)
            row[f"{q}_mean"] = float(vals.mean()) if vals.size else float("nan")
            row[f"{q}_ci_low"] = lo
            row[f"{q}_ci_high"] = hi
        for f in FACTORS:
            row[f"{f}_rmse"] = rmse_from_one(
                np.array([np.nan if r.get(f) is None else r[f] for r in recs], dtype=float)
            )
        rows.append(row)
    return rows


def _key(r: dict) -> tuple:
    """What makes two workflows' records the same scan: its name and modality (the name of its
    raw source). Not its template: a workflow's records share one (:func:`read_qc_folder`), and
    two workflows registered to two templates ran on the same scans (paired on the template
    too, they shared none: the paired and repeated-measures tests came out n/a)."""
    return r["scan"], r["modality"]


def matched_values(groups: dict[str, list[dict]], quantity: str) -> np.ndarray:
    """``(scans, workflows)`` values of ``quantity`` for the scans every workflow has (finite
    in all)."""
    key, fn, _ = QUANTITIES[quantity]
    tables = [{_key(r): r.get(key) for r in recs} for recs in groups.values()]
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    rows = []
    for k in common:
        vals = [t[k] for t in tables]
        if all(v is not None and math.isfinite(float(v)) for v in vals):
            rows.append([float(v) for v in vals])
    return fn(np.array(rows, dtype=float).reshape(-1, len(tables)))


#: residual variance below this fraction of the total is rounding's: no test (a constant
#: difference between two workflows, 0.0486 on every scan give or take 2e-16, gave a paired
#: t of -1e15 beside a repeated-measures F of n/a)
RESIDUAL_FLOOR = 1e-12


def _above_rounding(residual: float, total: float) -> bool:
    """Whether a sum of squares ``residual`` is more than rounding beside the ``total`` sum of
    squares (:data:`RESIDUAL_FLOOR`): the one test of the paired t-test and the
    repeated-measures F."""
    return bool(residual > RESIDUAL_FLOOR * max(total, 1e-300))


def _spread(x: np.ndarray) -> float:
    return float(((x - x.mean()) ** 2).sum())


def repeated_measures_f(x: np.ndarray) -> tuple[float, float]:
    """One-way repeated-measures ANOVA of ``x`` (scans x workflows): every workflow ran on the
    same scans, so the scans' own differences are taken out of the error.

    .. math:: F = \\frac{SS_w/(k-1)}{(SS_t - SS_w - SS_s)/((k-1)(n-1))},\\quad
              SS_w = n\\sum_j(\\bar{x}_{\\cdot j}-\\bar{x})^2,\\
              SS_s = k\\sum_i(\\bar{x}_{i\\cdot}-\\bar{x})^2

    Returns ``(F, p)``; ``nan`` for fewer than 2 scans or workflows, or no residual variance.
    """
    from scipy import stats

    n, k = x.shape
    if n < 2 or k < 2:
        return float("nan"), float("nan")
    grand = x.mean()
    ss_w = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_s = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_e = ((x - grand) ** 2).sum() - ss_w - ss_s
    df1, df2 = k - 1, (k - 1) * (n - 1)
    if not _above_rounding(ss_e, _spread(x)):
        return float("nan"), float("nan")
    f = (ss_w / df1) / (ss_e / df2)
    return float(f), float(stats.f.sf(f, df1, df2))


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN, not counted).

    .. math:: \\tilde p_{(i)} = \\max_{j \\le i} \\min(1, (m - j + 1)\\, p_{(j)})
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def anova_table(groups: dict[str, list[dict]]) -> list[dict]:
    """F-tests across workflows per quantity: the one-way ANOVA of SAMRI's paper
    (``scipy.stats.f_oneway``, the workflows as independent samples) and, since the workflows
    ran on the same scans, the repeated-measures one on the scans all of them have
    (:func:`repeated_measures_f`; ``F_rm``, ``p_rm``, ``n_matched``), which is the one to read
    when they did: the one-way test leaves the scans' own spread in its error (matched data
    where every scan moved a little gave p 0.97 against 0.001).

    .. math:: F = \\frac{\\sum_g n_g(\\bar{x}_g - \\bar{x})^2/(G-1)}
                       {\\sum_g\\sum_i (x_{gi} - \\bar{x}_g)^2/(N-G)}
    """
    from scipy import stats

    rows = []
    for q, (_, _, label) in QUANTITIES.items():
        samples = [_values(recs, q) for recs in groups.values()]
        ok = [s for s in samples if s.size >= 2]
        if len(ok) >= 2 and any(np.ptp(s) > 0 for s in ok):
            res = stats.f_oneway(*ok)
            f, p = float(res.statistic), float(res.pvalue)
        else:
            f, p = float("nan"), float("nan")
        matched = matched_values(groups, q)
        f_rm, p_rm = repeated_measures_f(matched)
        rows.append({"quantity": q, "label": label, "F": f, "p": p, "groups": len(ok),
                     "F_rm": f_rm, "p_rm": p_rm, "n_matched": int(matched.shape[0])})
    return rows


def pairwise_table(groups: dict[str, list[dict]]) -> list[dict]:
    """Pairwise comparisons of workflows A vs B per quantity.

    - Welch's two-tailed t-test (unequal variances) on all scans;
    - when scans with the same name exist in both, a paired two-tailed t-test on those, and
      their mean difference ``paired_diff`` (the one the test is of: ``mean_a - mean_b``
      counts each workflow's own scans, of the opposite sign where one has scans the other
      lacks);
    - RMSE ratio of the factor behind the quantity:
      :math:`\\mathrm{RMSE}_A(1-x) / \\mathrm{RMSE}_B(1-x)` (< 1: A conserves better).
    """
    from scipy import stats

    rows = []
    for (a, ra), (b, rb) in itertools.combinations(groups.items(), 2):
        for q, (key, fn, label) in QUANTITIES.items():
            va, vb = _values(ra, q), _values(rb, q)
            if va.size >= 2 and vb.size >= 2 and (np.ptp(va) > 0 or np.ptp(vb) > 0):
                with warnings.catch_warnings():  # scipy's raw "Precision loss occurred in
                    # moment calculation" where one workflow's values are all alike
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = stats.ttest_ind(va, vb, equal_var=False)
                t, p = float(res.statistic), float(res.pvalue)
            else:
                t, p = float("nan"), float("nan")
            # paired on common scans (same scan name and modality)
            da = {_key(r): r.get(key) for r in ra}
            db = {_key(r): r.get(key) for r in rb}
            common = [
                k for k in sorted(set(da) & set(db)) if da[k] is not None and db[k] is not None
            ]
            pa = fn(np.array([da[k] for k in common], dtype=float))
            pb = fn(np.array([db[k] for k in common], dtype=float))
            if len(common) >= 2 and _above_rounding(_spread(pa - pb),
                                                    _spread(np.concatenate([pa, pb]))):
                res = stats.ttest_rel(pa, pb)
                tp, pp = float(res.statistic), float(res.pvalue)
            else:
                tp, pp = float("nan"), float("nan")
            fa = np.array([np.nan if r.get(key) is None else r[key] for r in ra], dtype=float)
            fb = np.array([np.nan if r.get(key) is None else r[key] for r in rb], dtype=float)
            rmse_b = rmse_from_one(fb)
            ratio = rmse_from_one(fa) / rmse_b if rmse_b > 0 else float("nan")
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "quantity": q,
                    "label": label,
                    "mean_a": float(va.mean()) if va.size else float("nan"),
                    "mean_b": float(vb.mean()) if vb.size else float("nan"),
                    "welch_t": t,
                    "welch_p": p,
                    "n_paired": len(common),
                    # the paired t of +0.21 stood beside means of 0.053 and 0.088 (a scan of
                    # 0.30 in b alone), its own difference of +0.002 nowhere
                    "paired_diff": float((pa - pb).mean()) if common else float("nan"),
                    "paired_t": tp,
                    "paired_p": pp,
                    "rmse_ratio": ratio,
                }
            )
    # several pairs test each quantity: Holm-adjusted p-values beside the raw ones
    for q in QUANTITIES:
        mine = [r for r in rows if r["quantity"] == q]
        for test in ("welch_p", "paired_p"):
            for r, adj in zip(mine, holm([r[test] for r in mine]), strict=True):
                r[f"{test}_holm"] = adj
    return rows


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of dict rows."""
    if not rows:
        return ""
    columns = columns or list(rows[0])
    def cell(text: str) -> str:  # a label with '|' added a column to its row
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, columns)) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(_fmt(row.get(c, ""))) for c in columns) + " |")
    return "\n".join(lines)


def write_tsv(rows: list[dict], path: str | Path, columns: list[str] | None = None) -> None:
    """Write dict rows as a TSV (``n/a`` for missing/NaN)."""
    import csv

    columns = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            out = []
            for c in columns:
                v = row.get(c)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    out.append("n/a")
                else:
                    out.append(v)
            w.writerow(out)


#: point markers of the scans in :func:`violin_plot`, by modality
MARKERS = {"anat": "o", "func": "^"}
#: a group needs this many scans before :func:`violin_plot` draws a distribution (a violin)
#: over its points; fewer are shown as points only
MIN_SCANS_FOR_VIOLIN = 5
#: panels of :func:`violin_plot`: (record key, deviation |1 - x|?, axis label, ideal value)
PLOT_PANELS = (
    ("vcf", False, "VCF", 1.0),
    ("vcf", True, "|1 \u2212 VCF|  (tested)", 0.0),
    ("scf", False, "SCF", 1.0),
    ("scf", True, "|1 \u2212 SCF|  (tested)", 0.0),
    ("scf_normalised", False, "SCF / VCF$^{1/3}$  (tested)", 1.0),
)


#: inches of a panel's width its workflows' tick labels share (its 2.7 less the y axis')
TICK_ROW_INCHES = 1.9
#: narrower than this (inches) per workflow (5 or more workflows), the tick labels are written
#: on one slanted line each instead of wrapped into columns of a few letters
MIN_TICK_INCHES = 0.3
#: inches between two slanted tick labels (across their lines; 8 pt text is 0.11 high): the
#: slant is the least that keeps them apart, the panels wider where upright is not enough
SLANTED_GAP_INCHES = 0.13


#: the pieces :func:`wrap_label` breaks a label into: each ends after a space, underscore,
#: hyphen or dot (a folder name such as ``deriv_masked_fast`` has no space)
LABEL_PIECES = re.compile(r"[^\s_\-.]*[\s_\-.]?")


def widest_piece(text: str, size: float = 8) -> float:
    """Inches at ``size`` points of the widest piece of ``text`` that :func:`wrap_label` keeps
    whole where it can (a word, ``unmasked`` of ``deriv_unmasked``)."""
    return max((_label_width(p, size) for p in LABEL_PIECES.findall(text) if p.strip()),
               default=0.0)


def _label_width(text: str, size: float) -> float:
    """Inches of ``text`` at ``size`` points but the space or mark it ends with (which hangs
    past a line's width)."""
    from samri_ml.graph import text_width

    return text_width(text.rstrip().rstrip("_-.") or text.rstrip(), size)


def wrap_label(text: str, width_in: float, size: float = 8) -> str:
    """``text`` in lines no wider than ``width_in`` inches at ``size`` points, broken after
    spaces, underscores, hyphens and dots (:data:`LABEL_PIECES`), a piece wider than a line
    on its own broken anywhere (:func:`violin_figure` slants its labels instead where a
    piece, :func:`widest_piece`, is wider than their room). The mark a line ends with hangs
    past its width: counted, it sent ``unmasked_`` of ``sub-01_unmasked_fast`` to two
    lines, ``unmasked`` and ``_fast``."""
    lines, line = [], ""
    for part in LABEL_PIECES.findall(text):
        if not part:
            continue
        if line and _label_width(line + part, size) > width_in:
            lines.append(line.rstrip())
            line = ""
        while line == "" and len(part) > 1 and _label_width(part, size) > width_in:
            cut = next(k for k in range(len(part), 0, -1)
                       if k == 1 or _label_width(part[:k], size) <= width_in)
            lines.append(part[:cut])
            part = part[cut:]
        line += part
    lines.append(line.rstrip())
    return "\n".join(ln for ln in lines if ln)


def violin_figure(groups: dict[str, list[dict]]):
    """The figure of :func:`violin_plot` (a matplotlib Figure outside pyplot).

    One row of panels per modality (anat and func conserve smoothness differently, so they are
    never pooled), one column per quantity: the signed factors with their ideal (1, dashed)
    and the deviations |1 - x| that the statistics test (ideal 0). In every panel each scan is
    a point, the same scan in different workflows joined by a grey line (the workflows ran on
    the same scans); a violin with its median is drawn behind a workflow's points only where
    it has at least :data:`MIN_SCANS_FOR_VIOLIN` of them. Tick labels give each group's n.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(groups)
    kinds = sorted({r.get("modality") or "unknown" for recs in groups.values() for r in recs})
    kinds = kinds or ["unknown"]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    # ticks 1 apart on an axis 0.4 wider at each end: one apart in 0.2 + len(names)
    tick_row = max(TICK_ROW_INCHES, SLANTED_GAP_INCHES * (len(names) + 0.2))
    spacing = tick_row / (len(names) + 0.2)
    room = spacing - 0.08
    # a word wider than its column was wrapped in the middle ("unmask" over "ed" under four
    # workflows of folder names): slanted whole on one line instead
    slanted = room < MIN_TICK_INCHES or any(widest_piece(wf) > room for wf in names)
    slant, label_height = 0.0, 0.0
    if slanted:  # the least slant that keeps the labels apart, and the height it takes
        from samri_ml.graph import text_width

        slant = math.degrees(math.asin(min(1.0, SLANTED_GAP_INCHES / spacing)))
        longest = max(text_width(f"{wf} (n=00)", 8) for wf in names)
        label_height = max(0.0, longest * math.sin(math.radians(slant)) - 0.3)
    panel = tick_row + 2.7 - TICK_ROW_INCHES
    # a Figure without pyplot: a notebook's backend and open figures are left alone
    fig = Figure(figsize=(panel * len(PLOT_PANELS) + 0.4,
                          (3.3 + label_height) * len(kinds) + 0.9))
    FigureCanvasAgg(fig)  # its renderer, whatever the backend
    axes = fig.subplots(len(kinds), len(PLOT_PANELS), squeeze=False)
    for row, kind in enumerate(kinds):
        # per workflow: scan key -> record, of this modality
        tables = [{_key(r): r for r in groups[wf] if (r.get("modality") or "unknown") == kind}
                  for wf in names]
        scans = sorted(set().union(*tables), key=str) if tables else []
        offset = {k: (0.0 if len(scans) < 2 else -0.12 + 0.24 * j / (len(scans) - 1))
                  for j, k in enumerate(scans)}  # fmt: skip
        for col, (key, deviation, label, ideal) in enumerate(PLOT_PANELS):
            ax = axes[row, col]

            def value(rec, key=key, deviation=deviation):
                v = None if rec is None else rec.get(key)
                if v is None or not math.isfinite(float(v)):
                    return np.nan
                return abs(1.0 - float(v)) if deviation else float(v)

            vals = np.array([[value(t.get(k)) for t in tables] for k in scans],
                            dtype=float).reshape(len(scans), len(names))
            counts = np.isfinite(vals).sum(axis=0)
            for i in range(len(names)):
                d = vals[np.isfinite(vals[:, i]), i]
                if d.size >= MIN_SCANS_FOR_VIOLIN and np.ptp(d) > 0:
                    parts = ax.violinplot([d], positions=[i + 1], widths=0.7,
                                          showextrema=False, showmedians=True)
                    for body in parts["bodies"]:
                        body.set_facecolor(colors[i % len(colors)])
                        body.set_alpha(0.25)
                    parts["cmedians"].set_color("0.2")
                    parts["cmedians"].set_linewidth(1.2)
            for j, k in enumerate(scans):  # the same scan across workflows
                x = np.arange(1, len(names) + 1) + offset[k]
                ok = np.isfinite(vals[j])
                if (ok[1:] & ok[:-1]).any():
                    # NaN breaks the line: a scan missing from a middle workflow was joined
                    # across that workflow's violin, as if it had a value there
                    ax.plot(x, vals[j], color="0.55", lw=0.7, alpha=0.8, zorder=2)
            shift = np.array([offset[k] for k in scans])
            for i in range(len(names)):
                ok = np.isfinite(vals[:, i])
                # a partial field of view hollow: its VCF is not expected to be 1
                part = np.array([_is_partial(tables[i].get(k) or {}) for k in scans], bool)
                colour = colors[i % len(colors)]
                for chosen, hollow in ((ok & ~part, False), (ok & part, True)):
                    if chosen.any():
                        ax.scatter(i + 1 + shift[chosen], vals[chosen, i], s=20,
                                   color="none" if hollow else colour,
                                   edgecolor=colour if hollow else "k",
                                   linewidth=1.1 if hollow else 0.4,
                                   marker=MARKERS.get(kind, "o"), zorder=3)
            ax.axhline(ideal, color="0.3", linestyle="--", linewidth=0.8, zorder=1)
            if deviation:
                ax.set_ylim(bottom=0.0)
            ax.set_xlim(0.4, len(names) + 0.6)
            ax.set_xticks(range(1, len(names) + 1))
            if slanted:  # 5 or more workflows (or a word wider than its column): wrapped,
                # "samri_ml" took 5 lines of 2 letters
                ax.set_xticklabels([f"{wf} (n={c})" for wf, c in zip(names, counts, strict=True)],
                                   fontsize=8, rotation=slant, ha="right",
                                   rotation_mode="anchor")
            else:
                # wrapped to their share of the panel: "samri_ml generic" and "samri_ml masked"
                # ran into one another (and into the next panel's) on one line each
                ax.set_xticklabels([f"{wrap_label(wf, room)}\nn={c}"
                                    for wf, c in zip(names, counts, strict=True)], fontsize=8)
            ax.set_ylabel(f"{kind} scans\n{label}" if col == 0 else label, fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            if row == 0:
                ax.set_title(f"{label.replace('  (tested)', '')}\n(ideal = {ideal:g})",
                             fontsize=9)
    hollow = ("\nHollow points: a partial field of view (the scan covers under "
              f"{PARTIAL_FOV:.0%} of the template's brain): its VCF is not expected to be 1."
              if any(_is_partial(r) for recs in groups.values() for r in recs) else "")
    fig.suptitle(
        "One point per scan; grey lines join a scan across workflows; violins only where a "
        f"group has \u2265 {MIN_SCANS_FOR_VIOLIN} scans, its bar the median.\nThe statistics "
        "(qc_stats.md) test "
        "|1 \u2212 VCF|, |1 \u2212 SCF| and SCF/VCF^(1/3); dashed: the ideal value." + hollow,
        fontsize=9)
    fig.tight_layout()
    if slanted:  # the slant again for the panels' width after the layout (their y axes take some)
        width = axes[0, 0].get_position().width * fig.get_figwidth()
        slant = math.degrees(math.asin(min(1.0, SLANTED_GAP_INCHES * (len(names) + 0.2) / width)))
        for ax in axes.flat:
            for label in ax.get_xticklabels():
                label.set_rotation(slant)
        fig.tight_layout()
    return fig


def violin_plot(groups: dict[str, list[dict]], out_stem: str | Path) -> list[Path]:
    """QC factors per workflow and modality (:func:`violin_figure`), like Fig. 3 of SAMRI's
    registration paper but with the scans paired. Writes ``<out_stem>.png`` and ``.svg``."""
    fig = violin_figure(groups)
    out_stem = Path(out_stem)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    return paths


SUMMARY_COLUMNS = (
    ["workflow", "n"]
    + [f"{q}_{s}" for q in QUANTITIES for s in ("n", "mean", "ci_low", "ci_high")]
    + [f"{f}_rmse" for f in FACTORS]
)
PAIR_COLUMNS = [
    "a", "b", "quantity", "mean_a", "mean_b", "welch_t", "welch_p", "welch_p_holm", "n_paired",
    "paired_diff", "paired_t", "paired_p", "paired_p_holm", "rmse_ratio",
]  # fmt: skip
ANOVA_COLUMNS = ["quantity", "label", "F", "p", "groups", "F_rm", "p_rm", "n_matched"]
#: the columns of ``qc_metrics.tsv``: a scan's QC table's, the template and the record read
METRICS_COLUMNS = [*TABLE_COLUMNS, "space", "path"]


def table_dictionaries() -> dict[str, dict]:
    """The BIDS data dictionary (each column's ``Description``, ``Units``, ``Levels``) of each
    table :func:`compare_workflows` writes, by the table's file name; written beside it as
    ``<table>.json``."""
    quantity = {"Description": "Quantity compared",
                "Levels": {q: label for q, (_, _, label) in QUANTITIES.items()}}
    wf = {"Description": "The workflow's label in this comparison (--labels; else its "
          "folder's dataset_description.json Name, else the folder's name)"}
    stats = {}
    for q, (_, _, label) in QUANTITIES.items():
        stats[f"{q}_n"] = {"Description": f"Scans of the workflow whose {label} was measured "
                           "(those the mean and CI are of)"}
        stats[f"{q}_mean"] = {"Description": f"Mean {label} over those scans"}
        for side, bound in (("low", "Lower"), ("high", "Upper")):
            stats[f"{q}_ci_{side}"] = {"Description": f"{bound} bound of the 95% bootstrap "
                                       f"confidence interval of {q}_mean"}
    for f in FACTORS:
        stats[f"{f}_rmse"] = {"Description": f"Root-mean-square deviation of {f} from 1 over "
                              f"the workflow's scans, sqrt(mean((1 - {f})^2)): 0 is perfect "
                              "conservation"}
    p_holm = "Holm-adjusted over the pairs of workflows"
    columns = {
        "qc_metrics.tsv": {
            **data_dictionary(TABLE_COLUMNS), "workflow": wf,
            "space": {"Description": "Template of the record: its file name's space- label "
                      "(n/a: none)"},
            "path": {"Description": "The QC record the row was read from"}},
        "qc_summary.tsv": {"workflow": wf, "n": {"Description": "Scans of the workflow (its "
                                                 "QC records)"}, **stats},
        "qc_anova.tsv": {
            "quantity": quantity, "label": {"Description": "The quantity as a formula"},
            "F": {"Description": "F of the one-way ANOVA across workflows, as independent "
                  "samples (SAMRI's test)"},
            "p": {"Description": "p-value of F"},
            "groups": {"Description": "Workflows with 2 or more values, those F compares"},
            "F_rm": {"Description": "F of the repeated-measures ANOVA on the scans every "
                     "workflow has (the one to read where the workflows ran on the same "
                     "scans)"},
            "p_rm": {"Description": "p-value of F_rm"},
            "n_matched": {"Description": "Scans every workflow has, those F_rm compares"}},
        "qc_pairwise.tsv": {
            "a": {"Description": "First workflow of the pair"},
            "b": {"Description": "Second workflow of the pair"},
            "quantity": quantity,
            "mean_a": {"Description": "Mean of the quantity over workflow a's scans"},
            "mean_b": {"Description": "Mean of the quantity over workflow b's scans"},
            "welch_t": {"Description": "Welch's t (a - b; unequal variances, all scans)"},
            "welch_p": {"Description": "Two-tailed p-value of welch_t"},
            "welch_p_holm": {"Description": f"welch_p {p_holm}"},
            "n_paired": {"Description": "Scans both workflows have, those the paired test "
                         "compares"},
            "paired_diff": {"Description": "Mean of a - b over those scans, the difference "
                            "paired_t tests (mean_a - mean_b counts each workflow's own "
                            "scans)"},
            "paired_t": {"Description": "Paired t (a - b) on those scans"},
            "paired_p": {"Description": "Two-tailed p-value of paired_t"},
            "paired_p_holm": {"Description": f"paired_p {p_holm}"},
            "rmse_ratio": {"Description": "RMSE of a's factor from 1 / RMSE of b's, each "
                           "over its own scans (below 1: a conserves better)"}},
    }
    order = {"qc_metrics.tsv": METRICS_COLUMNS, "qc_summary.tsv": SUMMARY_COLUMNS,
             "qc_anova.tsv": ANOVA_COLUMNS, "qc_pairwise.tsv": PAIR_COLUMNS}
    return {name: {c: columns[name][c] for c in cols} for name, cols in order.items()}


def compare_workflows(
    folders: list[str | Path],
    labels: list[str] | None = None,
    out_dir: str | Path | None = None,
    modality: str | None = None,
    space: str | list[str] | None = None,
) -> dict:
    """Read the QC records of several derivatives folders and compare the workflows.

    Parameters
    ----------
    folders : list of paths
        One derivatives folder per workflow.
    labels : list of str, optional
        Workflow labels (default: :func:`default_labels`).
    out_dir : path, optional
        Where to write ``qc_metrics.tsv`` (all records), ``qc_summary.tsv``, ``qc_anova.tsv``,
        ``qc_pairwise.tsv`` (each with its data dictionary, ``qc_metrics.json``...:
        :func:`table_dictionaries`), ``qc_stats.md`` and ``qc_violin.png``/``.svg``.
    modality : {'anat', 'func'}, optional
        Keep only records of that modality.
    space : str or list of str, optional
        Keep only records of that template (``space-<label>``); needed where a folder holds
        several. A list gives one label per folder (workflows registered to different
        templates, each folder holding several).

    Returns
    -------
    dict
        ``records``, ``summary``, ``anova``, ``pairwise`` (lists of dicts), ``markdown`` and
        ``files`` (written paths).
    """
    if labels is not None and len(labels) != len(folders):
        raise SamriMLError(f"{len(labels)} labels given for {len(folders)} folders")
    spaces_given = [space] * len(folders) if space is None or isinstance(space, str) \
        else list(space)
    if len(spaces_given) != len(folders):
        raise SamriMLError(f"{len(spaces_given)} spaces given for {len(folders)} folders; "
                           "hint: give one for all folders, or one per folder")
    given_labels = labels is not None
    if labels is None:
        labels = default_labels(folders)
    seen: dict[Path, str] = {}
    for folder in folders:
        where = Path(folder).resolve()
        if where in seen:
            # compared with itself as two workflows: F 0, p 1, without a word
            raise SamriMLError(f"{folder} is given twice (also as {seen[where]}); hint: give "
                               "each workflow's derivatives folder once")
        seen[where] = str(folder)
    groups: dict[str, list[dict]] = {}
    for i, folder in enumerate(folders):
        label = labels[i]
        recs = read_qc_folder(folder, label, spaces_given[i])
        if modality:
            recs = [r for r in recs if r["modality"] == modality]
            if not recs:
                raise SamriMLError(f"{folder}: no QC records with modality '{modality}'")
        wf = recs[0]["workflow"]
        if wf in groups:
            raise SamriMLError(f"two folders are labelled '{wf}'; hint: "
                               + ("give each its own label in --labels" if given_labels
                                  else "name them with --labels"))
        groups[wf] = recs
    summary = summary_table(groups)
    anova = anova_table(groups)
    pairwise = pairwise_table(groups)
    # the scans a statistic rests on: those with a measured value of its quantity
    smallest = min(min(s["n"], *(s[f"{q}_n"] for q in QUANTITIES)) for s in summary)
    caution = (
        # "0 scan(s)" beside a table of n=6 (none with a measured SCF) read as a wrong count
        [f"**Caution:** {smallest} scan(s) in the smallest workflow (counting those with a "
         "measured value of each quantity); with fewer than "
         f"{MIN_SCANS_FOR_STATISTICS} the intervals and tests below say little."]
        if smallest < MIN_SCANS_FOR_STATISTICS else []
    )  # fmt: skip
    # the matched tests can rest on far fewer scans than the workflows hold (folders with a few
    # subjects in common): their p-values came without a word on it
    shared = min((r["n_matched"] for r in anova), default=0)
    # the scans every workflow has, whatever was measured on them (a quantity unmeasured
    # everywhere, SCF null, leaves its own n_matched 0 with the others' tests standing)
    common = len(set.intersection(*({_key(r) for r in recs} for recs in groups.values())))
    # three or more workflows: a pair can share more scans than all of them do, its paired
    # tests standing where the note said every paired test was n/a (or said little)
    have = {wf: {_key(r) for r in recs} for wf, recs in groups.items()}
    paired = {(a, b): len(have[a] & have[b]) for a, b in itertools.combinations(have, 2)}
    if len(groups) > 1 and common < 2:
        # the matched tests came out n/a without a word: folders of other subjects, or scans
        # named otherwise (records without scan or modality)
        na, stand = _pairs_split(paired.items(), 2)
        tests = ("the repeated-measures and paired tests are n/a" if not stand else
                 "the repeated-measures test is n/a"
                 + (f", as are the paired tests of {na}" if na else "")
                 + f" (those of {stand} stand)")
        caution.append(f"**Note:** the workflows share {common} scan(s) (matched by source "
                       f"name and modality), so {tests}; hint: check that they ran on the "
                       "same scans.")
    elif len(groups) > 1 and smallest >= MIN_SCANS_FOR_STATISTICS \
            and shared < MIN_SCANS_FOR_STATISTICS:
        few, stand = _pairs_split(
            (((r["a"], r["b"]), r["n_paired"]) for r in pairwise), MIN_SCANS_FOR_STATISTICS)
        tests = ("(n_matched, n_paired); with fewer than "
                 f"{MIN_SCANS_FOR_STATISTICS} the repeated-measures and paired tests"
                 if not stand else
                 f"(n_matched); with fewer than {MIN_SCANS_FOR_STATISTICS} the "
                 "repeated-measures test" + (f" and the paired tests of {few}" if few else ""))
        caution.append(f"**Caution:** the workflows share {shared} scan(s) {tests} below say "
                       "little.")
    lacking = _lacking(groups)
    if lacking and common >= 2:
        # a subject one workflow failed on (no record written) left its statistics without
        # the scan, the others' with it, and nothing said so
        caution.append("**Note:** not every workflow has a QC record of every scan ("
                       + "; ".join(lacking) + "): the means, the RMSE ratios, the F-test and "
                       "the Welch tests count each workflow's own scans, the repeated-measures "
                       "and paired tests those they share; a workflow that failed on a scan wrote no "
                       "record of it (see its reports and crash files).")
    spaces = {wf: recs[0].get("space", "") for wf, recs in groups.items()}
    if len(set(spaces.values())) > 1:
        caution.append("**Note:** the workflows registered to different templates ("
                       + "; ".join(f"{wf}: {s or 'none'}" for wf, s in spaces.items())
                       + "); their scans are paired by the name of their source.")
    methods = _raw_run_methods(groups)
    if methods:
        # an older release's records (the whole raw run) beside this one's (its dummy scans
        # left out): the functional VCF and SCF differ by the method too, and nothing said so
        caution.append("**Caution:** the functional scans' VCF and SCF were not computed "
                       "alike (" + "; ".join(methods) + "); their differences are partly the "
                       "method's. Rerun the older workflow with this samri_ml (the same "
                       "`-w` reuses its registrations) or `samri_ml-qc scan PROCESSED RAW "
                       "--dummy-scans N` to compare them.")
    unmeasured = _unmeasured(groups)
    if unmeasured:
        # they were dropped from the statistics of that quantity without a word, under an n
        # that counted them
        caution.append(f"**Note:** {len(unmeasured)} scan(s) with a VCF or SCF that could not "
                       "be measured (null in the QC record) are left out of that quantity's "
                       "statistics (their n is given beside the mean): "
                       + "; ".join(unmeasured) + ".")
    fewer_axes = [f"{wf}: {r['scan']} (without {', '.join(r[AXES_KEY])})"
                  for wf, recs in groups.items() for r in recs if r[AXES_KEY]]
    left_out = {tuple(r[AXES_KEY] or ()) for recs in groups.values() for r in recs}
    if fewer_axes and len(left_out) == 1:
        # every scan's SCF over the same axes: there are no others' to compare fewer with
        (axes,) = left_out
        caution.append(f"**Note:** every scan's SCF leaves out the {', '.join(axes)} "
                       f"{'axis' if len(axes) == 1 else 'axes'} (no neighbour correlation "
                       "along it in one image or both, `scf_axes_left_out` in the QC "
                       "records): the SCFs compare with one another, not with SCFs over "
                       "three axes.")
    elif fewer_axes:
        # an SCF over two axes pooled with SCFs over three, and nothing said so
        caution.append(f"**Note:** the SCF of {len(fewer_axes)} scan(s) compares fewer axes "
                       "than the others' (an axis without neighbour correlation in one image, "
                       "`scf_axes_left_out` in its QC record): " + "; ".join(fewer_axes) + ".")
    partial = _partial_fov(groups)
    if partial:
        # their VCF (0.51 for the sammba EPI, 72 % of the brain) was pooled with the others'
        # without a word; the report said it, this table did not
        only_func = all(r["modality"] == "func" for recs in groups.values() for r in recs
                        if _is_partial(r)) and any(r["modality"] == "anat"
                                                   for recs in groups.values() for r in recs)
        caution.append(f"**Note:** {len(partial)} scan(s) cover less than {PARTIAL_FOV:.0%} of "
                       "the template's brain (`brain_coverage` in the QC record), a partial "
                       "field of view: " + "; ".join(partial) + ". Their raw volume and their "
                       "registered copy (cut by the template's grid) hold different parts of "
                       "the head, so their VCF is not expected to be 1 and a low one does not "
                       "by itself mean a failed registration (see the report's pictures); they "
                       "are pooled below with the others"
                       + (" (`--modality anat` leaves them out)" if only_func and not modality
                          else "") + ".")
    unknown = [f"{wf}: {r['scan']}" for wf, recs in groups.items() for r in recs
               if r["modality"] == "func" and r.get(COVERAGE_KEY) is None]
    if unknown:
        # records of an older samri_ml, or of samri_ml-qc scan without --template-mask: a
        # partial field of view among them went without a word
        caution.append(f"**Note:** {len(unknown)} functional scan(s) without `brain_coverage` "
                       "in their QC record (" + "; ".join(unknown[:3])
                       + ("; …" if len(unknown) > 3 else "") + "): written by an older "
                       "samri_ml, or by `samri_ml-qc scan` without `--template-mask`, so a "
                       "partial field of view among them (VCF not expected to be 1) cannot be "
                       "named here; their subjects' reports say it.")
    kinds = sorted({r["modality"] for recs in groups.values() for r in recs if r["modality"]})
    if len(kinds) > 1:
        # structural and functional scans conserve volume and smoothness differently (the
        # example data: SCF about 0.77 structural; functional 1.15-1.2, 1.37 without the dummy
        # scans of a 14-volume run): pooled, they widen every interval
        caution.append(f"**Note:** {' and '.join(kinds)} scans are pooled below (the plot "
                       "marks them apart); `--modality " + "|".join(kinds) + "` compares "
                       "one kind.")
    md = "\n\n".join(
        caution + [
            "## Per workflow (mean [95% bootstrap CI])\n\n" + _summary_markdown(summary),
            "## F-tests across workflows (one-way ANOVA as in SAMRI's paper; F_rm, p_rm: "
            "repeated measures on the n_matched scans every workflow has, the one to read "
            "when the workflows ran on the same scans)\n\n"
            + markdown_table(anova, ANOVA_COLUMNS[1:]),
            "## Pairwise (two-tailed; _holm: Holm-adjusted over the pairs; paired_diff: mean "
            "a - b over the n_paired scans; RMSE ratio = RMSE_a(1-x) / RMSE_b(1-x))\n\n"
            + (
                markdown_table(pairwise, ["a", "b", "label"] + PAIR_COLUMNS[3:])
                or "(needs two or more workflows)"
            ),
        ]
    )
    files = []
    if out_dir is not None:
        out = Path(out_dir)
        records = [r for recs in groups.values() for r in recs]
        fig = violin_figure(groups)
        writers = {
            "qc_metrics.tsv": lambda p: write_tsv(
                # "none" left out, as a scan's own TSV says; n/a: a record without the key
                [{**r, AXES_KEY: None if r[AXES_KEY] is None else ",".join(r[AXES_KEY])
                  or "none"} for r in records], p, METRICS_COLUMNS),
            "qc_summary.tsv": lambda p: write_tsv(summary, p, SUMMARY_COLUMNS),
            "qc_anova.tsv": lambda p: write_tsv(anova, p, ANOVA_COLUMNS),
            "qc_pairwise.tsv": lambda p: write_tsv(pairwise, p, PAIR_COLUMNS),
            # each table's columns (and their units) described, as BIDS describes a TSV's
            **{table[:-4] + ".json": lambda p, d=columns: p.write_text(
                json.dumps(d, indent=2) + "\n") for table, columns in table_dictionaries().items()},
            "qc_stats.md": lambda p: p.write_text(md + "\n"),
            "qc_violin.png": lambda p: fig.savefig(p, dpi=120),
            "qc_violin.svg": lambda p: fig.savefig(p, dpi=120),
        }
        # renamed into place all together once every one is written: on a full disk it was a
        # bare "OSError: [Errno 28] No space left on device" that left an empty
        # qc_metrics.tsv, or one cut short; and a rerun stopped half-way (Ctrl-C, a full disk)
        # left the new tables beside the earlier run's plots and stats, without a word
        name = next(iter(writers))  # the one being written: named where it fails
        try:
            with atomic_targets([out / n for n in writers]) as parts:
                for name, part in zip(writers, parts, strict=True):
                    writers[name](part)
        except OSError as err:
            raise SamriMLError(f"cannot write {out / name} ({err.strerror or err}); "
                               "hint: free some space, or give --out on another disk"
                               if err.errno in FULL_DISK_ERRNOS else
                               f"cannot write {out / name} ({err.strerror or err})") from err
        files = [out / n for n in writers]
    return {
        "records": [r for recs in groups.values() for r in recs],
        "summary": summary,
        "anova": anova,
        "pairwise": pairwise,
        "markdown": md,
        "files": files,
    }


def _raw_run_methods(groups: dict[str, list[dict]]) -> list[str]:
    """``"<workflow>: <how its functional records took the raw run>"`` for each workflow, where
    not all functional records of the workflows took it alike (see
    :data:`~samri_ml.qc.metrics.METHOD_KEY`: a record without it, from before it was written,
    compared the registered run with the whole raw run); an empty list where they all did."""
    def how(n):
        return (f"the whole raw run, as an older samri_ml took it (no {METHOD_KEY})"
                if n is None else
                "the whole raw run" if n == 0 else f"the raw run without its first {n} volumes")

    per_wf = {wf: sorted({r.get(METHOD_KEY) for r in recs if r["modality"] == "func"},
                         key=lambda n: -1 if n is None else n)
              for wf, recs in groups.items()}
    if len({n or 0 for ns in per_wf.values() for n in ns}) < 2:  # no key: the whole run too
        return []
    return [f"{wf}: " + " and ".join(how(n) for n in ns) for wf, ns in per_wf.items() if ns]


def _pairs_split(shared, least: int) -> tuple[str, str]:
    """The pairs of workflows (``"a vs b, ..."``) whose shared scans, ``(pair, n)`` in
    ``shared`` (the least of a pair's where it comes once per quantity), are fewer than
    ``least``, and the others."""
    fewest: dict[tuple[str, str], int] = {}
    for pair, n in shared:
        fewest[pair] = min(n, fewest.get(pair, n))
    below = [f"{a} vs {b}" for (a, b), n in fewest.items() if n < least]
    above = [f"{a} vs {b}" for (a, b), n in fewest.items() if n >= least]
    return ", ".join(below), ", ".join(above)


def _is_partial(record: dict) -> bool:
    """Whether a record's scan is a partial field of view (its coverage measured and below
    :data:`~samri_ml.qc.metrics.PARTIAL_FOV`)."""
    coverage = record.get(COVERAGE_KEY)
    return coverage is not None and coverage < PARTIAL_FOV


def _partial_fov(groups: dict[str, list[dict]]) -> list[str]:
    """``"<workflow>: <scan> (<coverage>)"`` for each record of a partial field of view."""
    return [f"{wf}: {r['scan']} ({r[COVERAGE_KEY]:.0%})"
            for wf, recs in groups.items() for r in recs if _is_partial(r)]


def _lacking(groups: dict[str, list[dict]]) -> list[str]:
    """``"<workflow> lacks <n>: <scan> (<modality>), ..."`` (three named at most) for each
    workflow without a record of scans that another workflow has (:func:`_key`)."""
    have = {wf: {_key(r) for r in recs} for wf, recs in groups.items()}
    every = set().union(*have.values())
    out = []
    for wf, keys in have.items():
        lacks = sorted(every - keys, key=lambda k: (str(k[0]), str(k[1])))
        if lacks:
            names = [f"{scan} ({kind or 'no modality'})" for scan, kind in lacks]
            out.append(f"{wf} lacks {len(lacks)}: " + ", ".join(names[:3])
                       + (", …" if len(names) > 3 else ""))
    return out


def _unmeasured(groups: dict[str, list[dict]]) -> list[str]:
    """``"<workflow>: <scan> (<factors>)"`` for each record whose VCF, SCF or normalised SCF
    is null or not finite."""
    out = []
    for wf, recs in groups.items():
        for r in recs:
            bad = [k for k in FACTORS
                   if r.get(k) is None or not math.isfinite(float(r[k]))]
            if bad:
                out.append(f"{wf}: {r.get('scan', '?')} ({', '.join(bad)})")
    return out


def _summary_markdown(summary: list[dict]) -> str:
    rows = []
    for s in summary:
        row = {"workflow": s["workflow"], "n": s["n"]}
        for q, (_, _, label) in QUANTITIES.items():
            row[label] = (
                f"{_fmt(s[f'{q}_mean'])} [{_fmt(s[f'{q}_ci_low'])}, {_fmt(s[f'{q}_ci_high'])}]"
            )
            if s[f"{q}_n"] != s["n"]:
                row[label] += f" (n={s[f'{q}_n']})"
        rows.append(row)
    return markdown_table(rows)
