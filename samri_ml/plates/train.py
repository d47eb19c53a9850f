"""Training the plate embedding (``samri_ml-train-plates``).

Each step sees a batch of ``B`` images: ``B/3`` *anchors* (real training sections, lightly
augmented, plates turned into synthetic partial sections by
:func:`samri_ml.plates.augment.section_like`, or, with ``synth_fraction``, sections cut at an
angle from the CCF annotation and painted with random contrasts, :mod:`samri_ml.plates.synth`)
with distinct plate labels, the clean plates of
those labels, and as many other plates (neighbours of the anchors and random ones, lightly
augmented). The loss (see :mod:`samri_ml.models.siamese`) acts on all ``B`` labelled embeddings.
Every ``eval_every`` steps the plates are re-indexed and val_1 is ranked; training stops when
the val_1 MAE has not improved for ``patience`` steps, and the best model is kept.

At a constant learning rate the val_1 MAE of successive checkpoints jumps by several plates
(e.g. 1.6 -> 5.6 -> 2.7 within 500 steps), so a cosine decay (``schedule="cosine"``) and an
exponential moving average of the weights (``ema``, Polyak averaging; BatchNorm statistics
included) are offered: the averaged weights are what is evaluated and saved.

The step runs on Keras' TensorFlow or PyTorch backend (:func:`make_train_step`): a GPU
machine with PyTorch and without TensorFlow trains the same networks (``KERAS_BACKEND=torch``).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from samri_ml.io import json_dumps
from samri_ml.models.siamese import MODEL_PREFIX
from samri_ml.plates.augment import section_like
from samri_ml.plates.data import check_labels, load_atlas, load_sections, preprocess
from samri_ml.plates.metrics import format_metrics, ranking_metrics


@dataclass
class TrainConfig:
    """Settings of one training run (saved beside the checkpoints)."""

    data_dir: str
    out_dir: str
    size: int = 128
    backbone: str = "small"
    width: int = 16
    embedding_dim: int = 64
    loss: str = "ordinal"
    #: margin of the contrastive and triplet losses (None: the loss's default, 1.0 and 0.2)
    margin: float | None = None
    #: weights file of a ResNet backbone (then only its ``conv5`` layers train, as the seed's)
    backbone_weights: str | None = None
    batch_size: int = 48
    iterations: int = 10000
    patience: int = 2000
    eval_every: int = 250
    learning_rate: float = 1e-4
    #: "constant", or "cosine": decay from ``learning_rate`` to 1 % of it over ``iterations``
    schedule: str = "constant"
    #: momentum of an exponential moving average of the weights (0: off); evaluation,
    #: checkpoints and ``best.keras`` then use the averaged weights
    ema: float = 0.0
    seed: int = 0
    real_fraction: float = 0.4
    synth_fraction: float = 0.0
    synth_max_tilt: float = 6.0
    posterior_weight: float = 3.0
    smooth: float = 0.0
    #: threshold of the tissue box (:data:`samri_ml.plates.data.CROP_THRESHOLDS`)
    crop_threshold: str = "otsu"
    init: str | None = None
    #: minutes after which the run ends at its next evaluation (None: no limit)
    max_minutes: float | None = None
    extra: dict = field(default_factory=dict)


def _set_seeds(seed: int) -> None:
    import random

    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def embed(model, images: np.ndarray, flip_tta: bool = True, batch: int = 64) -> np.ndarray:
    """Embeddings of preprocessed images ``(N, s, s)``; with ``flip_tta`` the mean of the
    image's and its left-right mirror's embedding (re-normalised to unit length).

    Calls the model directly on small batches: ``model.predict`` costs about 0.1 s of set-up
    per call, more than the network itself for one section.
    """
    from keras import ops

    from samri_ml.models.inference import inference_fn

    x = images[..., None].astype(np.float32)
    if flip_tta:
        x = np.concatenate([x, x[:, :, ::-1]])
    fn = inference_fn(model)
    parts = [ops.convert_to_numpy(fn(x[i : i + batch])) for i in range(0, len(x), batch)]
    out = np.concatenate(parts)
    if flip_tta:
        n = len(images)
        out = out[:n] + out[n:]
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def rank_from_embeddings(
    section_emb: np.ndarray, plate_emb: np.ndarray, plate_numbers: np.ndarray, smooth: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Rank plates by Euclidean distance (smallest first).

    With ``smooth > 0`` the distance profile along the plate axis is smoothed first:
    ``d'_k = (1 - smooth) d_k + smooth (d_{k-1} + d_{k+1}) / 2`` (ends repeated), which favours
    plates whose neighbours also match (the plates form an ordered series 100 um apart).

    Returns
    -------
    rankings : (N, P) int array of plate numbers, best first
    distances : (N, P) float array, same order (ascending)
    """
    from samri_ml.plates.identify import _pairwise, smooth_profile

    d = smooth_profile(_pairwise(section_emb, plate_emb), plate_numbers, smooth)
    idx = np.argsort(d, axis=1, kind="stable")
    return plate_numbers[idx], np.take_along_axis(d, idx, axis=1)


class BatchMaker:
    """Draws training batches (numpy) as described in the module docstring."""

    def __init__(self, plates, plate_imgs, sec_labels, sec_imgs, cfg: TrainConfig):
        self.plates = np.asarray(plates)
        self.plate_imgs = plate_imgs  # (P, s, s) float32
        self.by_label: dict[int, list[np.ndarray]] = {}
        for lab, im in zip(sec_labels, sec_imgs, strict=True):
            self.by_label.setdefault(int(lab), []).append(im)
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        lo = min(self.by_label) - 10 if self.by_label else self.plates.min()
        w = np.where(self.plates >= lo, cfg.posterior_weight, 1.0)
        self.p = w / w.sum()
        self.index = {int(n): i for i, n in enumerate(self.plates)}
        self.synth = None
        if cfg.synth_fraction > 0:
            from samri_ml.plates.synth import Annotation, SectionSynth

            self.synth = SectionSynth(Annotation.load(), max_tilt_deg=cfg.synth_max_tilt)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        rng, cfg = self.rng, self.cfg
        n_anchor = cfg.batch_size // 3
        anchors = rng.choice(self.plates, n_anchor, replace=False, p=self.p)
        # half of the anchors come from labels that have real sections
        real_labels = np.array(sorted(self.by_label))
        n_real = int(round(cfg.real_fraction * n_anchor)) if len(real_labels) else 0
        if n_real:
            chosen = rng.choice(real_labels, min(n_real, len(real_labels)), replace=False)
            rest = [a for a in anchors if a not in set(chosen)]
            anchors = np.concatenate([chosen, rest[: n_anchor - len(chosen)]]).astype(int)
        imgs, labs = [], []
        # of the other anchors, this share is cut from the CCF annotation (synth.py)
        p_synth = cfg.synth_fraction / max(1e-6, 1 - cfg.real_fraction) if self.synth else 0
        for i, lab in enumerate(anchors):
            if i < n_real and int(lab) in self.by_label:
                src = self.by_label[int(lab)]
                im = section_like(src[rng.integers(len(src))], rng, strength=0.5)
            elif rng.random() < p_synth:
                im = preprocess(self.synth(int(lab), rng), cfg.size,
                                crop_threshold=cfg.crop_threshold)
                im = section_like(im, rng, strength=0.5)
            else:
                im = section_like(self.plate_imgs[self.index[int(lab)]], rng, strength=1.0)
            imgs.append(im)
            labs.append(int(lab))
        # the matching plates, then neighbours and random others
        others = set()
        n_other = cfg.batch_size - 2 * n_anchor
        while len(others) < n_other:
            if rng.random() < 0.5:
                c = int(rng.choice(anchors)) + int(rng.choice([-3, -2, -1, 1, 2, 3]))
            else:
                c = int(rng.choice(self.plates))
            if c in self.index and c not in set(anchors.tolist()):
                others.add(c)
        for lab in list(anchors) + sorted(others):
            im = self.plate_imgs[self.index[int(lab)]]
            imgs.append(section_like(im, rng, strength=0.25))
            labs.append(int(lab))
        return np.stack(imgs)[..., None].astype(np.float32), np.array(labs, dtype=np.int32)


#: the Keras backends :func:`make_train_step` has a step for
TRAIN_BACKENDS = ("tensorflow", "torch")


def refuse_backend(backend: str) -> None:
    """Refuse, in one line, a Keras backend without a training step (:data:`TRAIN_BACKENDS`)."""
    from samri_ml.errors import SamriMLError

    if backend not in TRAIN_BACKENDS:
        raise SamriMLError(f"the plate embedding trains on Keras' tensorflow or torch backend, "
                           f"not {backend}; hint: KERAS_BACKEND=tensorflow (or torch)")


def make_train_step(model, loss_fn, opt, ema: float = 0.0):
    """The training step of :func:`train` on Keras' backend, and the averaged weights.

    Returns ``step(x, y) -> loss`` (one Adam update of ``model`` on a batch, and, with
    ``ema > 0``, of an exponential moving average of every float weight, BatchNorm moving
    statistics included, warmed up as ``tf.train.ExponentialMovingAverage``: momentum
    ``min(ema, (1 + n) / (10 + n))`` after ``n`` updates; integer states such as dropout seeds
    are not averaged) and ``averaged_weights(raw) -> list | None`` (``raw``, the model's
    weights as :meth:`get_weights` gives them, with the averaged ones in place of the float
    weights; None without ``ema``).

    TensorFlow traces the step once (``tf.function``); PyTorch runs it eagerly, on the GPU
    where there is one (``KERAS_BACKEND=torch``: the plates can be trained where TensorFlow is
    not installed). JAX, whose steps are pure functions of the weights, is refused.
    """
    import keras

    backend = keras.backend.backend()
    weights, trainable = model.weights, model.trainable_weights
    averaged_idx = [i for i, w in enumerate(weights) if "float" in str(w.dtype)]

    if backend == "tensorflow":
        import tensorflow as tf

        shadow = [tf.Variable(weights[i], trainable=False) for i in averaged_idx] if ema else []
        n_updates = tf.Variable(0.0, trainable=False)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                emb = model(x, training=True)
                loss = loss_fn(y, emb)
            grads = tape.gradient(loss, trainable)
            opt.apply_gradients(zip(grads, trainable, strict=True))
            if shadow:
                n_updates.assign_add(1.0)
                m = tf.minimum(ema, (1.0 + n_updates) / (10.0 + n_updates))
                for s, i in zip(shadow, averaged_idx, strict=True):
                    s.assign(m * s + (1.0 - m) * weights[i])
            return loss

        def shadow_values():
            return [v.numpy() for v in shadow]

    elif backend == "torch":
        import torch

        with torch.no_grad():
            shadow = [weights[i].value.detach().clone() for i in averaged_idx] if ema else []
        count = [0]

        def step(x, y):
            emb = model(keras.ops.convert_to_tensor(x), training=True)
            loss = loss_fn(keras.ops.convert_to_tensor(y), emb)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():  # as Keras' own torch trainer applies the gradients
                opt.apply([v.value.grad for v in trainable], trainable)
                if shadow:
                    count[0] += 1
                    m = min(ema, (1.0 + count[0]) / (10.0 + count[0]))
                    for s, i in zip(shadow, averaged_idx, strict=True):
                        s.mul_(m).add_(weights[i].value.detach(), alpha=1.0 - m)
            return loss.detach()

        def shadow_values():
            return [s.cpu().numpy() for s in shadow]

    else:
        refuse_backend(backend)

    def averaged_weights(raw):
        if not ema:
            return None
        mixed = list(raw)
        for i, v in zip(averaged_idx, shadow_values(), strict=True):
            mixed[i] = v
        return mixed

    return step, averaged_weights


def evaluate(model, plates, plate_imgs, val_labels, val_imgs, smooth: float = 0.0) -> dict:
    """Rank all plates for each validation section; :func:`ranking_metrics` of the result."""
    t0 = time.perf_counter()
    pe = embed(model, plate_imgs)
    se = embed(model, val_imgs)
    rankings, _ = rank_from_embeddings(se, pe, np.asarray(plates), smooth=smooth)
    return ranking_metrics(rankings, val_labels, time.perf_counter() - t0)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train, early-stop on val_1 MAE, save ``best.keras``, ``last.keras``, ``history.json``.

    Returns
    -------
    dict
        ``best_step``, ``val_1`` and ``val_2`` metrics of the best model.
    """
    import keras
    from keras import ops
    from tqdm import tqdm

    from samri_ml.bids import DeferredInterrupt, deferred_sigint
    from samri_ml.errors import SamriMLError
    from samri_ml.models.siamese import LOSSES, build_embedding_net

    refuse_backend(keras.backend.backend())  # before anything is read or written
    if cfg.init:  # the network trained is the --init model's: config.json says so
        cfg = replace(cfg, **init_settings(cfg.init))
    _set_seeds(cfg.seed)
    out = Path(cfg.out_dir)
    data = Path(cfg.data_dir)
    why = other_run(out, cfg)
    if why:
        raise SamriMLError(f"{out}: {why}; hint: choose another out_dir, or remove that one")
    # the data and the starting model first: a refused run writes nothing
    plates, pimgs = load_atlas(data / "atlas")
    if cfg.batch_size - cfg.batch_size // 3 > len(plates):  # distinct plates in a batch
        raise SamriMLError(
            f"--batch-size {cfg.batch_size} needs more plates than the {len(plates)} of "
            f"{data / 'atlas'}; hint: --batch-size {3 * len(plates) // 2} or less")
    def prep(im):
        return preprocess(im, cfg.size, crop_threshold=cfg.crop_threshold)

    sections = {}
    for split in ("train", "val_1", "val_2"):
        paths, labels, imgs = load_sections(data / split)
        check_labels(paths, labels, plates)
        sections[split] = labels, [prep(im) for im in imgs]
    plate_imgs = np.stack([prep(im) for im in pimgs])
    tr_lab, tr_imgs = sections["train"]
    (v1_lab, v1), (v2_lab, v2) = ((lab, np.stack(ims)) for lab, ims in
                                  (sections["val_1"], sections["val_2"]))

    if cfg.init:
        # fine-tune a previous run (e.g. a second phase at a lower learning rate)
        model = _load_init(cfg.init, cfg.size)
    else:
        model = build_embedding_net(
            cfg.size, cfg.backbone, cfg.embedding_dim, width=cfg.width, normalize=True,
            weights=cfg.backbone_weights,
        )
    out.mkdir(parents=True, exist_ok=True)
    # a run with these settings starts again (the CLI refuses others), but its files go at
    # this run's first checkpoint, not now: Ctrl-C before that left OUT without the finished
    # run's best.keras (deleted here) and without one of its own
    earlier = [p for p in run_files(out) if p.name != "config.json"]
    log(f"model {model.name}: {model.count_params():,} parameters")
    loss_fn = LOSSES[cfg.loss]
    if cfg.margin is not None:
        loss_fn = functools.partial(loss_fn, margin=cfg.margin)
    opt = keras.optimizers.Adam(learning_rate_schedule(cfg))
    make_batch = BatchMaker(plates, plate_imgs, tr_lab, tr_imgs, cfg)

    step, averaged_weights = make_train_step(model, loss_fn, opt, cfg.ema)

    @contextmanager
    def averaged():
        """Inside: the model holds the averaged weights (if any); after: its own again."""
        raw = model.get_weights()
        mixed = averaged_weights(raw)
        if mixed is None:
            yield
            return
        model.set_weights(mixed)
        try:
            yield
        finally:
            model.set_weights(raw)

    history = []
    best = {"mae": np.inf, "step": 0}
    losses = []

    def evaluate_and_save(it: int) -> None:
        nonlocal best
        with deferred_sigint():  # TensorFlow's work: see the training step
            m1 = evaluate(model, plates, plate_imgs, v1_lab, v1, cfg.smooth)
            m2 = evaluate(model, plates, plate_imgs, v2_lab, v2, cfg.smooth)
        rec = {
            "step": it,
            # None at step 0, the --init model's evaluation before any training
            "loss": float(np.mean(losses[-cfg.eval_every :])) if losses else None,
            "val_1": m1,
            "val_2": m2,
            "time": time.time(),
        }
        history.append(rec)
        written = {"history.json": lambda p: p.write_text(json.dumps(history, indent=1)),
                   "history.png": lambda p: plot_history(history, p),
                   "last.keras": model.save, f"step_{it:05d}.keras": model.save}
        _write_files(out, written)
        names = set(written)
        if m1["mae"] < best["mae"]:
            new = {"mae": m1["mae"], "step": it, "val_1": m1, "val_2": m2}
            names |= {"best.keras", "best.json"}
            # the model and its record as one pair: Ctrl-C leaves both old or both new
            try:
                _write_files(out, {"best.keras": model.save,
                                   "best.json": lambda p: p.write_text(json_dumps(new, indent=2))})
            except DeferredInterrupt:  # Ctrl-C held back until both were renamed
                best = new
                raise
            best = new
        # the earlier run's files this run did not replace, once its own are written (they
        # were removed first: Ctrl-C in between left neither run's best.keras)
        for old in earlier:
            if old.name not in names:
                old.unlink(missing_ok=True)
        earlier.clear()
        loss = "-" if rec["loss"] is None else f"{rec['loss']:.4f}"
        say(
            f"step {it} loss {loss} | {format_metrics(m1, 'val_1')} | "
            f"{format_metrics(m2, 'val_2')} | best val_1 step {best['step']}"
        )
        bar.set_postfix(loss=loss, val1=f"{m1['mae']:.2f}")

    # a redraw at most every 2 s (30 s left a short run's bar at 0 until its end)
    # not into a log file (a redirected stderr): its redraws piled up on one line there; the
    # evaluations' lines say the progress (as train-masker's one line per epoch does)
    bar = tqdm(total=cfg.iterations, desc="train-plates", mininterval=2,
               disable=not sys.stderr.isatty())

    def say(line: str) -> None:
        """``log`` with the bar cleared first and drawn again below (as ``tqdm.write``): in a
        terminal each line began where the bar ended, under a stale bar."""
        with tqdm.external_write_mode():
            log(line)

    started = time.time()
    it = 0
    try:
        # config.json first thing in here: from the moment OUT holds a run, Ctrl-C says what
        # it holds (it was written before the model and the optimiser were built, and Ctrl-C
        # then said only "interrupted")
        _write_files(out, {"config.json": lambda p: p.write_text(json.dumps(asdict(cfg),
                                                                            indent=2))})
        if cfg.init:
            # the model fine-tuned is a candidate too (step 0): a run that only made it worse
            # kept and exported its best trained step (val_1 MAE 42 from the shipped 0.67)
            evaluate_and_save(0)
        # counted by hand: iterated, tqdm counts a step when the next one starts (a run that
        # stopped early ended its bar one step short)
        for it in range(1, cfg.iterations + 1):
            x, y = make_batch()
            # Ctrl-C waits for the step's end: one that came while TensorFlow traced the
            # first step (seconds) broke the trace, and the run ended "error: AttributeError:
            # 'SymbolicTensor' object has no attribute '_type_spec'", not "interrupted"
            with deferred_sigint():
                losses.append(float(ops.convert_to_numpy(step(x, y))))
            bar.update(1)
            if it % cfg.eval_every == 0 or it == cfg.iterations:
                with averaged():
                    evaluate_and_save(it)
                if it - best["step"] >= cfg.patience:
                    say(f"early stop at step {it}: val_1 MAE not improved for {cfg.patience} "
                        "steps")
                    break
                if cfg.max_minutes and time.time() - started > 60 * cfg.max_minutes:
                    say(f"time limit ({cfg.max_minutes:g} min) reached at step {it}; the best "
                        f"model so far is step {best['step']}'s")
                    break
        bar.close()
        _write_files(out, {"best.json": lambda p: p.write_text(json_dumps(best, indent=2))})
    except KeyboardInterrupt:  # Ctrl-C: say what the checkpoints hold
        from samri_ml.errors import SamriMLNote

        bar.close()
        if best["step"]:
            kept = (f"{out / 'best.keras'} holds the best model so far (step {best['step']}, "
                    f"val_1 MAE {best['mae']:.2f}; best.json says so)")
        else:
            kept = f"no checkpoint was saved (the first evaluation is at step {cfg.eval_every})"
            if earlier:
                kept += f"; the earlier run's files in {out} were left as they were"
        warnings.warn(f"interrupted at step {it} of {cfg.iterations}: {kept}", SamriMLNote,
                      stacklevel=2)
        raise
    return best


#: the files of a training run in its ``out_dir`` (``step_*.keras`` too: :func:`run_files`)
RUN_FILES = ("config.json", "history.json", "history.png", "best.json", "best.keras",
             "last.keras")


def plot_history(history: list[dict], path) -> None:
    """``history.json``'s curves as a PNG: the training loss, and the val_1 (early stopping)
    and val_2 (model selection) MAE per evaluation, the best val_1 step marked (the model
    ``best.keras`` holds). Written with each evaluation: the masker's training drew its curves,
    the plates' only wrote numbers (found by a review of the figures). A Figure without
    pyplot: a notebook's backend and open figures are left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in history]
    fig = Figure(figsize=(10, 4.0))
    FigureCanvasAgg(fig)
    ax_loss, ax_mae = fig.subplots(1, 2)
    ax_loss.plot(steps, [r["loss"] for r in history], "-o", ms=3.5, label="training loss")
    ax_loss.set_title("training loss (mean since the last evaluation)")
    ax_loss.set_ylabel("loss")
    for split, style in (("val_1", "-o"), ("val_2", "-s")):
        ax_mae.plot(steps, [r[split]["mae"] for r in history], style, ms=3.5,
                    label=f"{split} MAE" + (" (early stopping)" if split == "val_1" else
                                            " (model selection)"))
    if history:
        best = min(history, key=lambda r: (r["val_1"]["mae"], r["step"]))
        for ax in (ax_loss, ax_mae):
            ax.axvline(best["step"], color="tab:green", lw=1.2, alpha=0.8)
        ax_mae.plot(best["step"], best["val_1"]["mae"], "*", color="tab:green", ms=11,
                    label=f"best val_1: step {best['step']} (best.keras)")
    ax_mae.set_title("MAE: mean rank of the true plate (lower is better)")
    ax_mae.set_ylabel("MAE (plates)")
    ax_mae.set_ylim(bottom=0)
    for ax in (ax_loss, ax_mae):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)  # upper right covered a fine-tune's flat curves
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def run_files(out_dir) -> list[Path]:
    """The files of a training run (:data:`RUN_FILES`, ``step_*.keras``) in ``out_dir``."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted([out / n for n in RUN_FILES if (out / n).is_file()]
                  + [p for p in out.glob("step_*.keras") if p.is_file()])


def other_run(out_dir, cfg: TrainConfig) -> str | None:
    """Why ``out_dir`` holds another run than one with ``cfg`` (None: no run there, or one
    with the same settings, which :func:`train` starts again): a new run would leave its
    ``config.json`` beside the other's checkpoints."""
    files = run_files(out_dir)
    if not files:
        return None
    config = Path(out_dir) / "config.json"
    try:
        old = json.loads(config.read_text())
    except (OSError, ValueError):
        return f"it holds {files[0].name} of a run without a readable config.json"
    new = json.loads(json.dumps(asdict(cfg)))
    if not isinstance(old, dict):
        return "its config.json is not a run's"
    for key in ("data_dir", "init"):
        for record in (old, new):
            if isinstance(record.get(key), str):
                # recorded as given before it was resolved (and given relative to train() in
                # Python): the same command, or call, from the same folder is the same run
                record[key] = str(Path(record[key]).resolve())
    # out_dir is the folder itself, whatever name led to it (relative, moved, through a link)
    diff = [k for k in sorted(set(old) | set(new))
            if k != "out_dir" and old.get(k) != new.get(k)]
    if not diff:
        return None
    shown = ", ".join(f"{k} {old.get(k)!r}, here {new.get(k)!r}" for k in diff[:3])
    return f"it holds a run with other settings ({shown}{', ...' if len(diff) > 3 else ''})"


def _write_files(folder: Path, writers: dict) -> None:
    """Write each ``name: writer(path)`` of ``writers`` into ``folder`` as one set
    (:func:`samri_ml.bids.atomic_targets`): a file is never seen half-written, and an
    interruption leaves either all the old files or all the new."""
    from samri_ml.bids import atomic_targets

    with atomic_targets([folder / name for name in writers]) as tmps:
        for write, tmp in zip(writers.values(), tmps, strict=True):
            write(tmp)




def init_settings(path) -> dict:
    """The ``backbone``, ``width`` (small CNN) and ``embedding_dim`` of the plate embedding in
    ``path``, read from the ``.keras`` archive's saved configuration (no TensorFlow): what a
    run that starts from it (``--init``) trains, whatever its ``--backbone`` / ``--width``
    defaults say. Settings it cannot tell are left out; ``{}`` for a file that is no readable
    ``.keras`` archive (loading it names the cause)."""
    from samri_ml.models.inference import saved_config

    config = saved_config(path)
    try:
        name, layers = str(config.get("name", "")), list(config["layers"])
    except (KeyError, TypeError, AttributeError):  # None: no readable archive
        return {}
    if not name.startswith(MODEL_PREFIX):
        return {}
    out = {"backbone": name[len(MODEL_PREFIX):]}
    by_name = {layer.get("config", {}).get("name"): layer for layer in layers}
    if out["backbone"] == "small":  # its first convolution has ``width`` filters
        conv = next((la for la in layers if la.get("class_name") == "Conv2D"), None)
        if conv is not None:
            out["width"] = int(conv["config"]["filters"])
    if by_name.get("embedding", {}).get("class_name") == "Dense":
        out["embedding_dim"] = int(by_name["embedding"]["config"]["units"])
    return out


def _load_init(path, size: int):
    """The ``--init`` model (:func:`load_embedding`), refused in one line where it is made
    for another input size than ``size``."""
    from samri_ml.errors import SamriMLError

    model = load_embedding(path, "--init")
    side = model.input_shape[1]
    if side is not None and side != size:
        raise SamriMLError(f"--init {path} takes {side} px images, the run {size} px (--size); "
                           f"hint: pass --size {side}")
    return model


def load_embedding(path, option: str):
    """A plate embedding model given with ``option`` (``--init``, ``--ensemble``), refused in
    one line where it is missing, no Keras model, or no plate embedding (e.g. the brain
    masker: a page of TensorFlow error in the loss, or in the ensemble's Concatenate)."""
    import keras

    from samri_ml.errors import SamriMLError
    from samri_ml.plates.identify import _is_embedding

    if not Path(path).is_file():
        raise SamriMLError(f"{option} {path}: model file not found; hint: give the path of a "
                           ".keras file")
    try:
        model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as err:
        raise SamriMLError(f"{option} {path}: not a Keras model "
                           f"({str(err).split('. ')[0]})") from err
    if not _is_embedding(model):
        raise SamriMLError(f"{option} {path}: not a plate embedding model (it takes "
                           f"{model.input_shape} inputs and gives {model.output_shape} "
                           "outputs; a plate embedding maps a grey image to one vector); "
                           "hint: give a model of samri_ml-train-plates (its best.keras)")
    return model


def learning_rate_schedule(cfg: TrainConfig):
    """The Adam learning rate of ``cfg``: a float, or a cosine decay to 1 % over the run."""
    if cfg.schedule == "constant":
        return cfg.learning_rate
    if cfg.schedule == "cosine":
        import keras

        return keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=max(1, cfg.iterations), alpha=0.01
        )
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose constant or cosine")


def export_and_measure(
    run_dir, out_dir, data_dir, *, smooth: float = 0.0, region_weight: float = 0.0
) -> dict:
    """Ship ``run_dir/best.keras``: write the model and plate index into ``out_dir`` and
    ``plates_index_metrics.json`` (val_1 and val_2 metrics of the shipped ranking).

    All or nothing, as :func:`samri_ml.plates.identify.export_model`: the run and the data are
    checked first, the three files are made beside ``out_dir`` and moved into it at the end."""
    from samri_ml.bids import atomic_folder
    from samri_ml.errors import SamriMLError
    from samri_ml.plates.identify import PlateIdentifier, export_model

    run, data = Path(run_dir), Path(data_dir)
    for name in ("best.keras", "config.json"):
        if not (run / name).is_file():
            raise SamriMLError(f"{run / name}: no such file; hint: give the --out folder of a "
                               "finished training run")
    cfg = json.loads((run / "config.json").read_text())
    splits = {split: load_sections(data / split) for split in ("val_1", "val_2")}
    out = {"run": str(run_dir), "config": cfg, "smooth": smooth, "region_weight": region_weight}
    with atomic_folder(out_dir) as tmp:
        export_model(run / "best.keras", data / "atlas", tmp, size=cfg["size"], smooth=smooth,
                     region_weight=region_weight,
                     crop_threshold=cfg.get("crop_threshold", "otsu"))  # fmt: skip
        ident = PlateIdentifier(tmp / "plates_embedding.keras", tmp / "plates_index.npz")
        for split, (paths, labels, imgs) in splits.items():
            check_labels(paths, labels, ident.plates)  # inside: a refused export writes nothing
            ident.rank_read(imgs[:1])  # load_sections' images: made once (read_image)
            t0 = time.perf_counter()
            res = ident.rank_read(imgs)
            m = ranking_metrics([r["ranking"] for r in res], labels, time.perf_counter() - t0)
            out[split] = m
            if split == "val_1":  # the early-stopping split: how far a good match may lie
                # rounded up to 0.01: bfloat16 networks move distances in the third decimal
                nearest = max(r["distances"][0] for r in res)
                out["uncertain_distance"] = math.ceil(100 * nearest) / 100
        set_uncertain_distance(tmp / "plates_index.npz", out["uncertain_distance"])
        (tmp / "plates_index_metrics.json").write_text(json.dumps(out, indent=1))
    return out


def members_crop_threshold(member_paths) -> str:
    """The tissue box (``crop_threshold``) the member models were trained with, from the
    ``config.json`` beside each (a member without one counts as ``otsu``, the setting before
    there was a choice). Members trained with different boxes cannot share one
    preprocessing: refused."""
    from samri_ml.errors import SamriMLError

    found = {}
    for p in member_paths:
        cfg = Path(p).parent / "config.json"
        value = "otsu"
        if cfg.is_file():
            value = json.loads(cfg.read_text()).get("crop_threshold", "otsu")
        found.setdefault(value, []).append(str(p))
    if len(found) > 1:
        detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items())
        raise SamriMLError(f"--ensemble: the members were trained with different tissue boxes "
                           f"({detail}); hint: train them with the same --crop-threshold")
    return next(iter(found)) if found else "otsu"


def set_uncertain_distance(index_path, value: float) -> None:
    """Write ``uncertain_distance`` into a plate index: sections whose nearest plate is
    farther are flagged ``uncertain`` (:class:`samri_ml.plates.identify.PlateIdentifier`)."""
    with np.load(index_path, allow_pickle=False) as z:
        index = {k: z[k] for k in z.files}
    index["uncertain_distance"] = np.float64(value)
    np.savez_compressed(index_path, **index)


def make_ensemble_run(member_paths, run_dir) -> Path:
    """Write ``run_dir/best.keras`` = :func:`samri_ml.models.siamese.build_ensemble` of the
    member models (input: the largest member input), and a ``config.json`` for
    :func:`export_and_measure`."""

    from samri_ml.models.siamese import build_ensemble

    crop_threshold = members_crop_threshold(member_paths)
    members = [load_embedding(p, "--ensemble") for p in member_paths]
    size = max(int(m.input_shape[1]) for m in members)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = {"size": size, "backbone": "ensemble", "members": [str(p) for p in member_paths],
           "crop_threshold": crop_threshold}
    _write_files(run, {"best.keras": build_ensemble(members, size).save,
                       "config.json": lambda p: p.write_text(json.dumps(cfg, indent=1))})
    return run
