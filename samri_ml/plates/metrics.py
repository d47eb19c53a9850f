"""Ranking metrics of the seed paper (pure numpy).

For a section whose true plate is ``t`` and a ranking ``r`` of all plates (best first), the
rank of the truth is the 0-based position ``p = index(r, t)``. Over ``n`` sections:

- MAE (the seed's "mean absolute error") :math:`= \\frac{1}{n} \\sum_i p_i`
- Top-k accuracy :math:`= \\frac{1}{n} \\sum_i [p_i < k]` for k = 1, 3, 5, 10.
- Time: total seconds and seconds per section (``total / n``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOP_KS = (1, 3, 5, 10)


def true_rank(ranking: Sequence[int], truth: int) -> int:
    """0-based position of ``truth`` in ``ranking`` (the full list of plates, best first).

    Raises
    ------
    ValueError
        When ``truth`` is not among the ranked plates.
    """
    r = list(int(x) for x in ranking)
    if int(truth) not in r:
        raise ValueError(f"plate {truth} is not in the ranking")
    return r.index(int(truth))


def ranking_metrics(
    rankings: Sequence[Sequence[int]],
    truths: Sequence[int],
    seconds: float | None = None,
    ks: Sequence[int] = TOP_KS,
) -> dict:
    """MAE, Top-k accuracies (fractions) and timing over sections.

    ``mae = mean_i p_i`` and ``top{k} = mean_i [p_i < k]`` where ``p_i`` is the 0-based
    position of the true plate of section ``i`` in its ranking of all plates.

    Returns
    -------
    dict
        ``n``, ``mae``, ``top1``..``top10``, ``ranks`` (list of ``p_i``) and, when ``seconds``
        is given, ``seconds_total`` and ``seconds_per_section``.
    """
    if len(rankings) != len(truths):
        raise ValueError("one ranking per true plate is needed")
    if len(truths) == 0:
        raise ValueError("no sections to evaluate")
    ranks = np.array([true_rank(r, t) for r, t in zip(rankings, truths, strict=True)])
    out = {"n": int(len(ranks)), "mae": float(ranks.mean()), "ranks": ranks.tolist()}
    for k in ks:
        out[f"top{k}"] = float(np.mean(ranks < k))
    if seconds is not None:
        out["seconds_total"] = float(seconds)
        out["seconds_per_section"] = float(seconds) / len(ranks)
    return out


def format_metrics(m: dict, name: str = "") -> str:
    """One human-readable line: ``MAE 1.42  Top-1 25.0%  ...  time 7.2 s (0.60 s/section)``."""
    parts = [f"{name}" if name else "", f"n={m['n']}", f"MAE {m['mae']:.2f}"]
    parts += [f"Top-{k} {100 * m[f'top{k}']:.1f}%" for k in TOP_KS if f"top{k}" in m]
    if "seconds_total" in m:
        parts.append(
            f"time {m['seconds_total']:.3g} s ({1000 * m['seconds_per_section']:.1f} ms/section)"
        )
    return "  ".join(p for p in parts if p)
