"""Metric-learning losses against brute-force numpy definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from samri_ml.models import siamese


def _np(x):
    from keras import ops

    return float(ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    labels = np.array([1, 1, 2, 2, 3, 3, 3, 4], dtype=np.int32)
    emb = rng.normal(size=(8, 5)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    return labels, emb, d


def test_contrastive(batch):
    labels, emb, d = batch
    m = 1.0
    vals = []
    for i, j in itertools.permutations(range(8), 2):
        same = labels[i] == labels[j]
        vals.append(d[i, j] ** 2 if same else max(0, m - d[i, j]) ** 2)
    assert _np(siamese.contrastive_loss(labels, emb, margin=m)) == pytest.approx(
        np.mean(vals), rel=1e-4
    )


def test_triplet_hard(batch):
    labels, emb, d = batch
    vals = []
    for a in range(8):
        pos = [p for p in range(8) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(8) if labels[n] != labels[a]]
        if pos:
            vals.append(max(0, max(d[a, pos]) - min(d[a, neg]) + 0.2))
    assert _np(siamese.triplet_hard_loss(labels, emb, margin=0.2)) == pytest.approx(
        np.mean(vals), rel=1e-4
    )


def test_triplet_semihard(batch):
    labels, emb, d = batch
    vals = []
    for a, p in itertools.permutations(range(8), 2):
        if labels[a] != labels[p]:
            continue
        neg = [n for n in range(8) if labels[n] != labels[a]]
        semi = [d[a, n] for n in neg if d[a, n] > d[a, p]]
        dn = min(semi) if semi else max(d[a, neg])
        vals.append(max(0, d[a, p] - dn + 0.2))
    assert _np(siamese.triplet_semihard_loss(labels, emb, margin=0.2)) == pytest.approx(
        np.mean(vals), rel=1e-4
    )


def test_ordinal_prefers_ordered_embeddings():
    labels = np.arange(1, 9, dtype=np.int32)
    ordered = np.stack([np.cos(labels / 4.0), np.sin(labels / 4.0)], 1).astype(np.float32)
    shuffled = ordered[np.random.default_rng(0).permutation(8)]
    assert _np(siamese.ordinal_contrastive_loss(labels, ordered)) < _np(
        siamese.ordinal_contrastive_loss(labels, shuffled)
    )


def test_build_small_net_shape():
    model = siamese.build_embedding_net(64, "small", 16, width=4)
    out = model.predict(np.random.rand(2, 64, 64, 1).astype(np.float32), verbose=0)
    assert out.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
