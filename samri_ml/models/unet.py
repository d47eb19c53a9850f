"""The seed's 2D U-Net for coronal brain masking, and its losses.

The layout is zhixuhao's U-Net (the one the seed, Klug et al., trained): four contracting blocks of
two 3x3 ReLU convolutions and a 2x2 max-pooling, a bottleneck, four expanding blocks (2x upsampling,
a 2x2 convolution, concatenation with the skip connection, two 3x3 convolutions), a two-filter 3x3
convolution and a 1x1 sigmoid. Two dropout layers (rate 0.5) follow the fourth contracting block and
the bottleneck. ``width`` is the number of filters of the first block (zhixuhao: 64); it doubles at
every level, so ``width=16`` has 1/16 of the parameters and FLOPs of the original.

Keras is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

#: input size of the seed's network (coronal slices resized/padded to 64 x 64)
INPUT_SHAPE = (64, 64, 1)


def build_unet(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    *,
    width: int = 16,
    dropout: float = 0.5,
    depth: int = 4,
    name: str = "unet_brainmask",
):
    """Build the (uncompiled) U-Net.

    Parameters
    ----------
    input_shape : tuple of int
        ``(rows, cols, channels)``; rows and cols must be divisible by ``2**depth``.
    width : int
        Filters of the first level (doubled at each of the ``depth`` poolings).
    dropout : float
        Rate of the two dropout layers (after the deepest contracting block and the bottleneck).
    depth : int
        Number of poolings (4 in the seed).
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Maps ``(batch, rows, cols, channels)`` to per-pixel brain probabilities in ``[0, 1]`` of
        shape ``(batch, rows, cols, 1)``.
    """
    import keras
    from keras import layers

    if input_shape[0] % 2**depth or input_shape[1] % 2**depth:
        raise ValueError(f"input size {input_shape[:2]} must be divisible by {2**depth}")

    def conv(x, filters, size=3):
        return layers.Conv2D(
            filters, size, activation="relu", padding="same", kernel_initializer="he_normal"
        )(x)

    inputs = keras.Input(shape=input_shape, name="slice")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv(conv(x, width * 2**level), width * 2**level)
        if level == depth - 1:
            x = layers.Dropout(dropout, name="dropout_contract")(x)
        skips.append(x)
        x = layers.MaxPooling2D(pool_size=(2, 2))(x)
    x = conv(conv(x, width * 2**depth), width * 2**depth)
    x = layers.Dropout(dropout, name="dropout_bottleneck")(x)
    for level in reversed(range(depth)):
        filters = width * 2**level
        up = conv(layers.UpSampling2D(size=(2, 2))(x), filters, size=2)
        x = layers.Concatenate(axis=3)([skips[level], up])
        x = conv(conv(x, filters), filters)
    x = conv(x, 2)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


def unet_width(model) -> int | None:
    """The ``width`` a U-Net of :func:`build_unet` was built with (the filters of its first
    convolution; of an :func:`ensemble`, its first member's); None for a model without
    convolutions."""
    for layer in model.layers:
        if hasattr(layer, "filters"):
            return int(layer.filters)
        if hasattr(layer, "layers") and (width := unet_width(layer)) is not None:
            return width
    return None


def uncompiled_copy(model, name: str | None = None):
    """A new, uncompiled model with ``model``'s architecture (its weights not copied), named
    ``name`` where given."""
    config = model.get_config()
    if name is not None:
        config["name"] = name
    return model.__class__.from_config(config, custom_objects=CUSTOM_OBJECTS)


def ensemble(members, name: str = "unet_ensemble"):
    """One Keras model giving the mean of ``members``' brain probabilities (each maps a
    64 x 64 x 1 slice to a probability map): several networks run as one, with every command
    that takes ``--model``. The members are copied (renamed ``member_0``, ...: two of one
    name cannot sit in one model), so the models given stay as they were.

    Two networks averaged replace the left-right mirrored prediction, which a single network
    needs (:func:`samri_ml.masking.predict.mirrors_by_default`): the same number of passes.
    """
    from samri_ml.models.inference import import_keras

    keras = import_keras()
    inp = keras.Input(INPUT_SHAPE, name="slice")
    outs = []
    for i, model in enumerate(members):
        copy = uncompiled_copy(model, name=f"member_{i}")
        copy.set_weights(model.get_weights())
        outs.append(copy(inp))
    out = keras.layers.Average(name="mean_probability")(outs)
    return keras.Model(inp, out, name=name)


def ensemble_size(model) -> int:
    """How many networks' mean ``model`` gives: the members of an :func:`ensemble` (a model
    whose output averages sub-models), else 1."""
    layers = getattr(model, "layers", ())
    if not any(type(layer).__name__ == "Average" for layer in layers):
        return 1
    return max(1, sum(1 for layer in layers if hasattr(layer, "layers")))


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """Smoothed Dice coefficient over the whole batch (the seed's ``dice_coef``).

    ``D = (2 * sum(t * p) + s) / (sum(t) + sum(p) + s)`` with element-wise products over all pixels of
    the batch and ``s = smooth = 1``. Works on Keras tensors and on numpy arrays.
    """
    from keras import ops

    t = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    p = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    intersection = ops.sum(t * p)
    return (2.0 * intersection + smooth) / (ops.sum(t) + ops.sum(p) + smooth)


def dice_loss(y_true, y_pred):
    """``1 - D`` with ``D`` the smoothed Dice coefficient (0 for identical masks, ~1 for disjoint)."""
    return 1.0 - dice_coefficient(y_true, y_pred)


def bce_loss(y_true, y_pred):
    """Mean binary cross-entropy ``-mean(t log p + (1 - t) log(1 - p))`` (p clipped to [eps, 1-eps])."""
    from keras import ops

    t = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
    return -ops.mean(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))


def bce_dice_loss(y_true, y_pred):
    """The seed's training loss: binary cross-entropy plus Dice loss, ``BCE + (1 - D)``."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


#: custom objects needed to load a compiled model file
CUSTOM_OBJECTS = {
    "dice_coefficient": dice_coefficient,
    "dice_loss": dice_loss,
    "bce_loss": bce_loss,
    "bce_dice_loss": bce_dice_loss,
}
