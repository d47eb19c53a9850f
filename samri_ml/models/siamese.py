"""Siamese embedding network and metric-learning losses for atlas-plate identification.

The network maps a grayscale section or plate to an ``L``-dimensional embedding; plates are
ranked by the Euclidean distance between their embedding and the section's (the seed paper,
Antanavicius, Leiras, Selvan). Keras is imported inside the functions so that importing this
module stays cheap.

All losses have the signature ``loss(labels, embeddings)`` with integer plate ``labels`` of
shape ``(B,)`` and ``embeddings`` of shape ``(B, L)``; they are written on ``keras.ops`` only
(no tensorflow-addons), so they run on any Keras 3 backend.
"""

from __future__ import annotations

BACKBONES = ("small", "resnet50v2", "resnet101v2")
#: what the name of a plate embedding model starts with (``plate_embedding_<backbone>``, and
#: ``plate_embedding_ensemble``): how its saved configuration tells it from other models
MODEL_PREFIX = "plate_embedding_"


def build_embedding_net(
    input_size: int = 128,
    backbone: str = "small",
    embedding_dim: int = 64,
    *,
    weights: str | None = None,
    width: int = 16,
    normalize: bool = True,
    dropout: float = 0.2,
):
    """Build the embedding network.

    Parameters
    ----------
    input_size : int
        Side of the square grayscale input (the seed used 224, 448 or 1024).
    backbone : {"small", "resnet50v2", "resnet101v2"}
        ``"small"`` is a 4-stage CNN (about 0.1 M parameters at ``width=8``) that trains from
        scratch on a CPU; the ResNets are ``keras.applications`` models (``weights=None``, or a
        weights file: then only the ``conv5`` layers are trainable, as in the seed).
    embedding_dim : int
        ``L``, the size of the embedding (the seed: 64).
    weights : str, optional
        Path of backbone weights (``.h5``/``.weights.h5``); never downloaded.
    width : int
        Channels of the first stage of the small CNN (doubling per stage, capped at 8x).
    normalize : bool
        L2-normalise the embedding (distances then lie in [0, 2]).
    dropout : float
        Dropout before the last dense layer.

    Returns
    -------
    keras.Model
        Input ``(input_size, input_size, 1)`` float in [0, 1]; output ``(embedding_dim,)``.
    """
    import keras
    from keras import layers

    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {BACKBONES}")
    inp = keras.Input((input_size, input_size, 1), name="image")
    if backbone == "small":
        # cheap stem (stride 2 + max-pool, as ResNet's) so that it trains on two CPU cores
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(inp)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
        filters = width
        for stage in range(3):
            filters = min(2 * filters, 8 * width)
            for _ in range(1 if stage == 0 else 2):
                x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
                x = layers.BatchNormalization()(x)
                x = layers.Activation("relu")(x)
            x = layers.MaxPooling2D(2)(x)
        # keep a coarse spatial layout (where the ventricles, hippocampus... are) and the
        # global texture statistics
        spatial = layers.Conv2D(16, 1, activation="relu")(x)
        spatial = layers.AveragePooling2D(max(1, spatial.shape[1] // 4))(spatial)
        feats = layers.Concatenate()(
            [layers.Flatten()(spatial), layers.GlobalAveragePooling2D()(x)]
        )
    else:
        app = {
            "resnet50v2": keras.applications.ResNet50V2,
            "resnet101v2": keras.applications.ResNet101V2,
        }[backbone]
        rgb = layers.Concatenate()([inp, inp, inp])  # the ImageNet stem expects 3 channels
        base = app(include_top=False, weights=None, input_shape=(input_size, input_size, 3))
        if weights:
            try:
                base.load_weights(weights)
            except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
                from samri_ml.errors import SamriMLError

                raise SamriMLError(f"{weights}: not weights of a {backbone} backbone without "
                                   f"its top ({type(err).__name__}: {err}); hint: save them "
                                   f"with keras.applications.{app.__name__}(include_top="
                                   "False).save_weights('x.weights.h5')") from err
            for layer in base.layers:
                layer.trainable = layer.name.startswith("conv5") or layer.name == "post_bn"
        feats = layers.GlobalAveragePooling2D()(base(rgb))
    x = layers.Dense(256, activation="relu")(feats)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(embedding_dim, name="embedding")(x)
    if normalize:
        x = layers.UnitNormalization(name="l2_normalize")(x)
    return keras.Model(inp, x, name=f"{MODEL_PREFIX}{backbone}")


def pairwise_sq_distances(embeddings):
    """Squared Euclidean distances ``D_ij = ||e_i - e_j||^2`` (clipped at 0), shape (B, B)."""
    from keras import ops

    sq = ops.sum(ops.square(embeddings), axis=1)
    d = sq[:, None] - 2.0 * ops.matmul(embeddings, ops.transpose(embeddings)) + sq[None, :]
    return ops.maximum(d, 0.0)


def _distances(embeddings):
    from keras import ops

    d2 = pairwise_sq_distances(embeddings)
    # sqrt has an infinite gradient at 0 (the diagonal): add a tiny epsilon
    return ops.sqrt(d2 + 1e-12)


def _masks(labels):
    from keras import ops

    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    same = ops.equal(labels[:, None], labels[None, :])
    eye = ops.eye(ops.shape(labels)[0], dtype="bool")
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    return positive, negative


def contrastive_loss(labels, embeddings, margin: float = 1.0):
    """Contrastive loss over all pairs of the batch (Hadsell et al.).

    ``L = mean_{i != j} [ y_ij d_ij^2 + (1 - y_ij) max(0, m - d_ij)^2 ]`` where
    ``y_ij = 1`` when ``i`` and ``j`` show the same plate and ``d`` is the Euclidean distance.
    """
    from keras import ops

    d = _distances(embeddings)
    pos, neg = _masks(labels)
    pos = ops.cast(pos, d.dtype)
    neg = ops.cast(neg, d.dtype)
    per_pair = pos * ops.square(d) + neg * ops.square(ops.maximum(margin - d, 0.0))
    return ops.sum(per_pair) / ops.maximum(ops.sum(pos) + ops.sum(neg), 1.0)


def triplet_hard_loss(labels, embeddings, margin: float = 0.2):
    """Batch-hard triplet loss (Hermans et al.).

    For each anchor ``a`` with at least one positive:
    ``L_a = max(0, max_p d_ap - min_n d_an + m)``; ``L = mean_a L_a``.
    """
    from keras import ops

    d = _distances(embeddings)
    pos, neg = _masks(labels)
    big = ops.max(d) + 1.0
    hardest_pos = ops.max(ops.where(pos, d, 0.0), axis=1)
    hardest_neg = ops.min(ops.where(neg, d, big), axis=1)
    valid = ops.cast(ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1)), d.dtype)
    per_anchor = ops.maximum(hardest_pos - hardest_neg + margin, 0.0) * valid
    return ops.sum(per_anchor) / ops.maximum(ops.sum(valid), 1.0)


def triplet_semihard_loss(labels, embeddings, margin: float = 0.2):
    """Semi-hard triplet loss (Schroff et al., FaceNet; the tensorflow-addons definition).

    For every positive pair ``(a, p)`` the negative is the closest ``n`` with
    ``d_ap < d_an`` (semi-hard); when none exists, the farthest negative. Then
    ``L = mean_{(a, p)} max(0, d_ap - d_an + m)``.
    """
    from keras import ops

    d = _distances(embeddings)
    pos, neg = _masks(labels)
    big = ops.max(d) + 1.0
    # (a, p, n) cubes: d_an broadcast over p
    d_ap = d[:, :, None]
    d_an = d[:, None, :]
    neg3 = neg[:, None, :]
    semihard = ops.logical_and(neg3, d_an > d_ap)
    has_semihard = ops.any(semihard, axis=2)
    closest_semihard = ops.min(ops.where(semihard, d_an, big), axis=2)
    farthest_neg = ops.max(ops.where(neg, d, 0.0), axis=1)[:, None]
    chosen = ops.where(has_semihard, closest_semihard, farthest_neg)
    per_pair = ops.maximum(d - chosen + margin, 0.0)
    posf = ops.cast(pos, d.dtype)
    return ops.sum(per_pair * posf) / ops.maximum(ops.sum(posf), 1.0)


def ordinal_contrastive_loss(labels, embeddings, temperature: float = 0.1, sigma: float = 1.0):
    """Soft supervised-contrastive loss that knows neighbouring plates look alike.

    With ``s_ij = -||e_i - e_j||^2 / tau`` (``j != i``) and soft targets
    ``t_ij ∝ exp(-(y_i - y_j)^2 / (2 sigma^2))`` normalised over ``j != i``:
    ``L = mean_i  - sum_{j != i} t_ij log softmax_j(s_ij)``.

    Plates one or two apart are thus pulled together a little, far plates pushed apart: the
    embedding orders plates along the antero-posterior axis, so a wrong first choice is
    usually a neighbour (small MAE).
    """
    from keras import ops

    y = ops.cast(ops.reshape(labels, (-1,)), "float32")
    n = ops.shape(y)[0]
    eye = ops.eye(n, dtype="bool")
    d2 = pairwise_sq_distances(embeddings)
    logits = ops.where(eye, -1e9, -d2 / temperature)
    log_p = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    w = ops.exp(-ops.square(y[:, None] - y[None, :]) / (2.0 * sigma**2))
    w = ops.where(eye, 0.0, w)
    t = w / ops.maximum(ops.sum(w, axis=1, keepdims=True), 1e-12)
    return -ops.mean(ops.sum(t * ops.where(eye, 0.0, log_p), axis=1))


LOSSES = {
    "ordinal": ordinal_contrastive_loss,
    "contrastive": contrastive_loss,
    "triplet-semihard": triplet_semihard_loss,
    "triplet-hard": triplet_hard_loss,
}


def build_ensemble(members, input_size: int):
    """One model whose embedding is the concatenation of the members' (L2-normalised)
    embeddings divided by ``sqrt(k)``, so that
    ``||E(a) - E(b)||^2 = (1/k) sum_m ||e_m(a) - e_m(b)||^2`` (the mean squared distance).

    Members may have different input sizes: each gets the input resized (antialiased), once
    per size for all the members of that size.
    """
    import keras
    from keras import layers

    inp = keras.Input((input_size, input_size, 1), name="image")
    resized = {input_size: inp}
    outs = []
    for i, m in enumerate(members):
        m.name = f"member_{i}"  # nested models need unique names
        size = m.input_shape[1]
        if size not in resized:
            resized[size] = layers.Resizing(size, size, antialias=True, name=f"resize_{size}")(inp)
        outs.append(m(resized[size]))
    x = outs[0] if len(outs) == 1 else layers.Concatenate()(outs)
    x = layers.Rescaling(1.0 / len(members) ** 0.5, name="ensemble_scale")(x)
    return keras.Model(inp, x, name=f"{MODEL_PREFIX}ensemble")
