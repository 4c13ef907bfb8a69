"""Two-stage transfer learning, sized for a CPU.

The frozen lower part of the backbone (everything below `settings.first_trainable`) is run once:
its activations for `views_per_image` augmented views of each training image, and for one plain
view of each validation image, are cached as float16 under `workdir/cache/`. Then
  stage 1 trains the head (dropout + dense) on pooled features of the cached views, after measuring
         which imbalance strategy (class weights or balanced sampling) gives the better validation
         balanced accuracy, and
  stage 2 trains the top blocks and the head on the cached activations, one view per epoch, or,
         with `fine_tune="full"`, every layer (BatchNorm too) on images augmented afresh each
         epoch, streamed rather than cached.
Both stop early on validation balanced accuracy, computed from validation predictions each epoch.
The network trained is the one `build_network` returns (the stages' models share its layers), so
inference is the plain network on `to_model_input` images. Every epoch writes a checkpoint; running
again with the same workdir resumes; `workdir/network.weights.h5` is the final result.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermserve.core.model_config import InputSpec
from dermserve.core.preprocessing import to_model_input
from dermserve.trainer.augment import augment, view_rng
from dermserve.trainer.class_weights import balanced_class_weights
from dermserve.trainer.data import Record, Split, label_indices, record_contexts
from dermserve.trainer.metrics import balanced_accuracy
from dermserve.trainer.network import (
    build_network,
    cut_tensor,
    head_model,
    lower_model,
    set_all_trainable,
    set_trainable,
)
from dermserve.trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = "network.weights.h5"
SUMMARY_FILE = "training.json"
IMBALANCE_FILE = "imbalance.json"
STRATEGIES = ("class_weights", "balanced_sampling")
CACHE_CHUNK = 256  # images augmented ahead of the network: overlaps PIL work with TF's
PREDICT_BATCH = 256  # cached activations per prediction call (small tensors: memory is no issue)
LOG_EVERY_STEPS = 50  # steps between progress lines within a stage-2 epoch (about a minute)


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools (only possible before its runtime starts); other Keras
    backends (JAX on an accelerator) keep their own."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        logger.info("TensorFlow already started; keeping its thread settings")


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], the same arithmetic as the SavedModel's graph."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def load_image(record: Record) -> Image.Image:
    with Image.open(record.path) as image:
        return image.convert("RGB")


def plain_view(record: Record, spec: InputSpec) -> np.ndarray:
    return to_model_input(load_image(record), spec)


# --- Activation cache -------------------------------------------------------------------------


def _chunks(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


def _prefetched(make: Callable[[range], np.ndarray], count: int,
                pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
    """Yield `make(chunk)` for each chunk, building the next one while the caller works."""
    pending: Future[np.ndarray] | None = None
    for chunk in _chunks(count, CACHE_CHUNK):
        future = pool.submit(make, chunk)
        if pending is not None:
            yield pending.result()
        pending = future
    if pending is not None:
        yield pending.result()


def compiled_forward(model: Any) -> Callable[[Any], Any]:
    """`model(x, training=False)` (x an array, or a list of them for a model of several inputs)
    compiled once: a tf.function under TensorFlow (a Keras model
    called eagerly per batch is ~10x slower), Keras' own jitted predict step under JAX."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: model(x, training=False),  # type: ignore[no-any-return]
                           reduce_retracing=True)
    return model.predict_on_batch  # type: ignore[no-any-return]


def _run_lower(lower: Any, images: Iterator[np.ndarray], count: int, name: str,
               batch_size: int) -> np.ndarray:
    forward = compiled_forward(lower)
    out: np.ndarray | None = None
    done, started = 0, time.monotonic()
    for chunk in images:
        for start in range(0, len(chunk), batch_size):
            activations = np.asarray(forward(scale_pixels(chunk[start:start + batch_size])))
            if out is None:
                out = np.empty((count, *activations.shape[1:]), np.float16)
            out[done:done + len(activations)] = activations
            done += len(activations)
        rate = done / max(1e-9, time.monotonic() - started)
        logger.info("cache %s: %d/%d images (%.1f img/s)", name, done, count, rate)
    assert out is not None, "empty image list"
    return out


def _cached(path: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    if path.exists():
        logger.info("cache hit %s", path)
        return np.asarray(np.load(path))
    array = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, array)
    partial.rename(path)  # atomic: a cut-short run never leaves a truncated cache
    return array


def reused_cache(source: Path, split: Split, name: str, count: int) -> np.ndarray | None:
    """`source`'s cached `name` rows of this split's `part` (train or val) images, picked by
    image id: any subset of the source's images, in this split's order, reuses its views."""
    part = "val" if name == "val.npy" else "train"
    try:
        manifest = json.loads((source / "split.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cache source {source} has no readable split.json: {exc}") from exc
    position = {entry["image_id"]: row for row, entry in enumerate(manifest["splits"][part])}
    ours = [record.image_id for record in getattr(split, part)][:count]
    absent = [image_id for image_id in ours if image_id not in position]
    if absent:
        raise ValueError(f"cache source {source}: {len(absent)} of this split's {part} images "
                         f"are not among its own (first: {absent[0]}); it cannot share its cache")
    path = source / "cache" / name
    if not path.exists():
        return None
    logger.info("reusing %d rows of %s", count, path)
    rows = np.array([position[image_id] for image_id in ours], np.int64)
    cached = np.load(path, mmap_mode="r")
    # a prefix is read as one slice; any other subset row by row, in sorted order for the mmap
    if np.array_equal(rows, np.arange(len(rows))):
        return np.asarray(cached[:len(rows)])
    order = np.argsort(rows)
    picked = np.empty((len(rows), *cached.shape[1:]), cached.dtype)
    picked[order] = cached[rows[order]]
    return picked


def cache_activations(lower: Any, split: Split, settings: TrainSettings,
                      workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Activations at the cut: train (views, N, ...) of augmented views; val (N, ...) plain."""
    spec, seed, cache = settings.input_spec(), settings.seed, workdir / "cache"
    train, val = split.train, split.val

    def augmented(view: int) -> Callable[[range], np.ndarray]:
        return lambda chunk: np.stack([augment(load_image(train[i]), spec,
                                               view_rng(seed, view, i)) for i in chunk])

    def plain(chunk: range) -> np.ndarray:
        return np.stack([plain_view(val[i], spec) for i in chunk])

    def run(make: Callable[[range], np.ndarray], count: int, name: str) -> np.ndarray:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return _run_lower(lower, _prefetched(make, count, pool), count, name,
                              settings.batch_size)

    def build(name: str, count: int, make: Callable[[range], np.ndarray]) -> np.ndarray:
        source = settings.cache_source
        reused = None if source is None else reused_cache(source, split, name, count)
        return reused if reused is not None else run(make, count, name)

    val_acts = _cached(cache / "val.npy", lambda: build("val.npy", len(val), plain))
    views = [_cached(cache / f"train-view{view}.npy",
                     lambda view=view: build(f"train-view{view}.npy", len(train),  # type: ignore[misc]
                                             augmented(view)))
             for view in range(settings.views_per_image)]
    return np.stack(views), val_acts


# --- Batches, imbalance and the epoch monitor --------------------------------------------------


def epoch_order(labels: np.ndarray, strategy: str, rng: np.random.Generator) -> np.ndarray:
    """One epoch's example indices: a permutation, or, for balanced sampling, as many draws with
    replacement in which every class is equally likely."""
    if strategy != "balanced_sampling":
        return rng.permutation(len(labels))
    counts = np.bincount(labels)
    probabilities = 1.0 / (len(counts[counts > 0]) * counts[labels])
    return rng.choice(len(labels), size=len(labels), p=probabilities / probabilities.sum())


def example_weights(labels: np.ndarray, strategy: str, num_classes: int) -> np.ndarray:
    if strategy != "class_weights":
        return np.ones(len(labels), np.float32)
    weights: np.ndarray = balanced_class_weights(labels, num_classes)[labels]
    return weights.astype(np.float32)


def _epoch_batches(labels: np.ndarray, fetch: Callable[[int, np.ndarray], np.ndarray],
                   strategy: str, num_classes: int, settings: TrainSettings,
                   start_epoch: int) -> Any:
    """A keras PyDataset of `(fetch(epoch, indices), labels, weights)` batches in each epoch's
    order (see `epoch_order`), starting at `start_epoch` so a resumed stage continues its order."""
    import keras

    weights = example_weights(labels, strategy, num_classes)
    batch_size, seed = settings.batch_size, settings.seed

    class EpochBatches(keras.utils.PyDataset):  # type: ignore[misc]  # keras is untyped
        def __init__(self) -> None:
            super().__init__()
            self.epoch = start_epoch
            self._shuffle()

        def _shuffle(self) -> None:
            self.order = epoch_order(labels, strategy, np.random.default_rng([seed, self.epoch]))

        def __len__(self) -> int:
            return math.ceil(len(labels) / batch_size)

        def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            index = np.sort(self.order[step * batch_size:(step + 1) * batch_size])
            return fetch(self.epoch, index), labels[index], weights[index]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self._shuffle()

    return EpochBatches()


def cached_batches(views: np.ndarray, labels: np.ndarray, strategy: str,
                   settings: TrainSettings, num_classes: int) -> Callable[[int], Any]:
    """Batches of cached views: epoch `e` serves view `e % len(views)`."""
    def fetch(epoch: int, index: np.ndarray) -> np.ndarray:
        return np.asarray(views[epoch % len(views)][index], np.float32)

    return partial(_epoch_batches, labels, fetch, strategy, num_classes, settings)


def streamed_batches(records: Sequence[Record], labels: np.ndarray, strategy: str,
                     settings: TrainSettings, num_classes: int) -> Callable[[int], Any]:
    """Batches of images augmented afresh every epoch (views numbered after the cached ones, so
    none repeats): what a fine-tune of the whole backbone needs, and costs only PIL time."""
    spec, seed, first_view = settings.input_spec(), settings.seed, settings.views_per_image

    def fetch(epoch: int, index: np.ndarray) -> np.ndarray:
        return scale_pixels(np.stack([augment(load_image(records[i]), spec,
                                              view_rng(seed, first_view + epoch, int(i)))
                                      for i in index]))

    return partial(_epoch_batches, labels, fetch, strategy, num_classes, settings)


class StageState:
    """What a stage has done so far, kept in `checkpoints/<stage>-state.json` for resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = json.loads(path.read_text()) if path.exists() else {}
        self.epochs_done: int = raw.get("epochs_done", 0)
        self.best_score: float = raw.get("best_score", -1.0)
        self.best_epoch: int = raw.get("best_epoch", -1)
        self.finished: bool = raw.get("finished", False)
        self.history: list[dict[str, float]] = raw.get("history", [])

    def save(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(vars(self) | {"path": str(self.path)}, indent=1))
        partial.rename(self.path)


def _monitor(network: Any, predict: Callable[[], np.ndarray], val_labels: np.ndarray,
             state: StageState, checkpoints: Path, stage: str, patience: int,
             deadline: float | None, log_steps: int) -> Any:
    """A callback: validation balanced accuracy each epoch, checkpoints, early stopping."""
    import keras

    num_classes = int(network.outputs[0].shape[-1])

    class EpochMonitor(keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.started = time.monotonic()

        def on_train_batch_end(self, step: int, logs: dict[str, float] | None = None) -> None:
            if log_steps and step % log_steps == 0:
                logger.info("%s step %d loss %.4f", stage, step, (logs or {}).get("loss", math.nan))

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            score = balanced_accuracy(val_labels, predict().argmax(axis=1), num_classes)
            seconds = time.monotonic() - self.started
            state.history.append({"epoch": epoch, "loss": float((logs or {}).get("loss", math.nan)),
                                  "val_balanced_accuracy": score, "seconds": seconds})
            state.epochs_done = epoch + 1
            if score > state.best_score:
                state.best_score, state.best_epoch = score, epoch
                network.save_weights(checkpoints / f"{stage}-best.weights.h5")
            network.save_weights(checkpoints / f"{stage}-last.weights.h5")
            state.save()
            logger.info("%s epoch %d: loss %.4f val balanced accuracy %.4f (best %.4f at %d), "
                        "%.0f s", stage, epoch, state.history[-1]["loss"], score,
                        state.best_score, state.best_epoch, seconds)
            out_of_time = deadline is not None and time.time() + seconds > deadline
            if epoch - state.best_epoch >= patience or out_of_time:
                logger.info("%s stops after epoch %d (%s)", stage, epoch,
                            "time budget" if out_of_time else "no improvement")
                self.model.stop_training = True

    return EpochMonitor()


def _predict_logits(model: Any, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model(inputs[s:s + PREDICT_BATCH].astype(np.float32),
                                            training=False))
                           for s in range(0, len(inputs), PREDICT_BATCH)])


def _logits_of_cache(model: Any, inputs: np.ndarray) -> Callable[[], np.ndarray]:
    """Validation logits of cached activations or features, with the weights of the moment."""
    return lambda: _predict_logits(model, inputs)


def _logits_of_images(network: Any, records: Sequence[Record],
                      settings: TrainSettings) -> Callable[[], np.ndarray]:
    """Validation logits of plain views of `records`, read as the service reads images."""
    spec = settings.input_spec()
    return lambda: predict_network(network, records, spec, settings.batch_size)[0]


def _cosine(base: float, epochs: int) -> Callable[[int, float], float]:
    return lambda epoch, _lr: base * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))


def fit_stage(network: Any, model: Any, stage: str, batches: Callable[[int], Any],
              val: tuple[Callable[[], np.ndarray], np.ndarray], epochs: int,
              learning_rate: float, settings: TrainSettings, checkpoints: Path,
              deadline: float | None = None, log_steps: int = 0,
              patience: int | None = None) -> StageState:
    """Train `model` (a view of `network`'s layers) on `batches(start_epoch)` with early stopping
    on `val` (a function giving validation logits, and the labels); resumable."""
    import keras

    checkpoints.mkdir(parents=True, exist_ok=True)
    state = StageState(checkpoints / f"{stage}-state.json")
    if state.finished:
        network.load_weights(checkpoints / f"{stage}-best.weights.h5")
        return state
    predict_val, val_labels = val
    num_classes = int(network.outputs[0].shape[-1])
    if state.epochs_done:
        logger.info("%s resumes after epoch %d", stage, state.epochs_done - 1)
        network.load_weights(checkpoints / f"{stage}-last.weights.h5")
    else:
        # The starting point is a candidate too (epoch -1), so a stage never ends worse than it
        # began: fine-tuning the top blocks can lose to the head alone.
        state.best_score = balanced_accuracy(val_labels, predict_val().argmax(axis=1),
                                             num_classes)
        network.save_weights(checkpoints / f"{stage}-best.weights.h5")
        logger.info("%s starts at val balanced accuracy %.4f", stage, state.best_score)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [keras.callbacks.LearningRateScheduler(_cosine(learning_rate, epochs)),
                 _monitor(network, predict_val, val_labels, state, checkpoints, stage,
                          settings.patience if patience is None else patience, deadline,
                          log_steps)]
    if state.epochs_done < epochs:
        model.fit(batches(state.epochs_done), epochs=epochs, initial_epoch=state.epochs_done,
                  callbacks=callbacks, verbose=0)
    network.load_weights(checkpoints / f"{stage}-best.weights.h5")
    state.finished = True
    state.save()
    return state


# --- The stages ------------------------------------------------------------------------------


def _pooled(network: Any, settings: TrainSettings, activations: np.ndarray) -> np.ndarray:
    """Pooled features of cached activations through the (frozen) top of the network."""
    import keras

    model = keras.Model(cut_tensor(network, settings.first_trainable), network.outputs[1])
    return _predict_logits(model, activations)


def _fit_head(network: Any, settings: TrainSettings, stage: str,
              train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              strategy: str, epochs: int, workdir: Path) -> StageState:
    """Train the head alone on pooled features (`train`: views (V, N, D) and labels)."""
    model = head_model(network)
    num_classes = int(network.outputs[0].shape[-1])
    return fit_stage(network, model, stage,
                     cached_batches(*train, strategy, settings, num_classes),
                     (_logits_of_cache(model, val[0]), val[1]), epochs,
                     settings.head_learning_rate, settings, workdir / "checkpoints")


def measure_imbalance(network: Any, settings: TrainSettings, train: tuple[np.ndarray, np.ndarray],
                      val: tuple[np.ndarray, np.ndarray], workdir: Path) -> str:
    """Train the head with each strategy from the same start; keep the better one on validation
    balanced accuracy. The result, with every score, goes to `workdir/imbalance.json`."""
    path = workdir / IMBALANCE_FILE
    if settings.imbalance != "auto":
        return settings.imbalance
    if path.exists():
        return str(json.loads(path.read_text())["chosen"])
    start = [w.copy() for w in network.get_weights()]
    scores: dict[str, float] = {}
    trials: dict[str, Any] = {}
    for strategy in STRATEGIES:
        network.set_weights(start)
        state = _fit_head(network, settings, f"trial-{strategy}", train, val, strategy,
                          settings.imbalance_trial_epochs, workdir)
        scores[strategy] = state.best_score
        trials[strategy] = {"best_val_balanced_accuracy": state.best_score,
                            "best_epoch": state.best_epoch, "history": state.history}
    network.set_weights(start)
    chosen = max(STRATEGIES, key=lambda strategy: scores[strategy])
    path.write_text(json.dumps({"chosen": chosen, "trials": trials}, indent=1))
    logger.info("imbalance: %s (validation balanced accuracy %s)", chosen, scores)
    return chosen


def _stage_one(network: Any, settings: TrainSettings, views: np.ndarray, labels: np.ndarray,
               val: tuple[np.ndarray, np.ndarray], workdir: Path) -> tuple[str, StageState]:
    set_trainable(network, None)
    head_state = StageState(workdir / "checkpoints" / "stage1-head-state.json")
    measured = settings.imbalance != "auto" or (workdir / IMBALANCE_FILE).exists()
    if head_state.finished and measured:
        # Resuming after stage 1: skip recomputing the pooled features (minutes on a CPU).
        network.load_weights(workdir / "checkpoints" / "stage1-head-best.weights.h5")
        return measure_imbalance(network, settings, (views, labels), val, workdir), head_state
    pooled = np.stack([_pooled(network, settings, view) for view in views])
    val_pooled = _pooled(network, settings, val[0])
    # Every cached view is one more example for the head: it is tiny, so it sees them all at once.
    head_data = (pooled.reshape(1, -1, pooled.shape[-1]), np.tile(labels, len(views)))
    strategy = measure_imbalance(network, settings, head_data, (val_pooled, val[1]), workdir)
    state = _fit_head(network, settings, "stage1-head", head_data, (val_pooled, val[1]),
                      strategy, settings.head_epochs, workdir)
    return strategy, state


def _stage_two(network: Any, settings: TrainSettings, split: Split, views: np.ndarray,
               val: tuple[np.ndarray, np.ndarray], strategy: str, workdir: Path,
               deadline: float | None) -> StageState:
    """Fine-tune: the top blocks on the cached views, or (`fine_tune="full"`) every layer on
    images augmented afresh each epoch."""
    import keras

    labels = label_indices(split.train, split.labels)
    num_classes = len(split.labels)
    if settings.fine_tune == "full":
        momentum = settings.batchnorm_momentum if settings.fine_tune_batchnorm else None
        trainable = set_all_trainable(network, momentum)
        model = keras.Model(network.inputs, network.outputs[0])
        batches = streamed_batches(split.train, labels, strategy, settings, num_classes)
        predict_val = _logits_of_images(network, split.val, settings)
        stage = "stage2-full"
    else:
        trainable = set_trainable(network, settings.first_trainable)
        model = keras.Model(cut_tensor(network, settings.first_trainable), network.outputs[0])
        batches = cached_batches(views, labels, strategy, settings, num_classes)
        predict_val = _logits_of_cache(model, val[0])
        stage = "stage2-top"
    logger.info("%s trains %d layers from %s", stage, len(trainable), trainable[0])
    return fit_stage(network, model, stage, batches, (predict_val, val[1]),
                     settings.fine_tune_epochs, settings.fine_tune_learning_rate, settings,
                     workdir / "checkpoints", deadline, LOG_EVERY_STEPS,
                     settings.fine_tune_patience)


def new_network(settings: TrainSettings, num_classes: int) -> Any:
    return build_network(num_classes, settings.input_spec(), settings.backbone,
                         settings.weights_path, settings.dropout, settings.seed,
                         settings.colour_constancy)


def train_network(split: Split, settings: TrainSettings, workdir: Path) -> Any:
    """Train (or resume, or just load) the network for `split`; see the module docstring."""
    import keras

    configure_threads(settings.threads)
    keras.utils.set_random_seed(settings.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    network = new_network(settings, len(split.labels))
    final = workdir / FINAL_WEIGHTS
    if final.exists():
        logger.info("loading finished weights %s", final)
        network.load_weights(final)
        return network
    started = time.time()
    deadline = started + settings.time_budget_s if settings.time_budget_s else None
    set_trainable(network, None)
    train_views, val_acts = cache_activations(
        lower_model(network, settings.first_trainable), split, settings, workdir)
    train_labels = label_indices(split.train, split.labels)
    val = (val_acts, label_indices(split.val, split.labels))
    strategy, head = _stage_one(network, settings, train_views, train_labels, val, workdir)
    top = _stage_two(network, settings, split, train_views, val, strategy, workdir,
                     deadline)
    network.save_weights(final)
    _write_summary(workdir, settings, strategy, head, top, time.time() - started)
    return network


def _write_summary(workdir: Path, settings: TrainSettings, strategy: str, head: StageState,
                   top: StageState, seconds: float) -> None:
    summary = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "imbalance_strategy": strategy,
        "stages": {name: {"best_val_balanced_accuracy": s.best_score, "best_epoch": s.best_epoch,
                          "history": s.history} for name, s in (("head", head), ("top", top))},
        "wall_seconds_this_run": seconds,
    }
    (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))


# --- Prediction --------------------------------------------------------------------------------


def predict_network(network: Any, records: Sequence[Record], spec: InputSpec,
                    batch_size: int = 64, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of `records`' images, read with PIL and passed through
    `to_model_input` as the service does, with their age, sex and site when the network takes
    context. tta averages the logits over the plain view and its horizontal and vertical flips;
    the features always come from the plain view."""
    from dermserve.trainer.two_origin_network import network_takes_context

    compiled = compiled_forward(network)
    contexts = record_contexts(records) if network_takes_context(network) else None
    logits, features = [], []
    for start in range(0, len(records), batch_size):
        images = np.stack([plain_view(r, spec) for r in records[start:start + batch_size]])
        rows = None if contexts is None else contexts.rows(start, start + batch_size)

        def forward(views: np.ndarray, rows: Any = rows) -> Any:
            scaled = scale_pixels(views)
            return compiled(scaled if rows is None else [scaled, *rows.tensors().values()])

        batch_logits, batch_features = forward(images)
        batch_logits = np.asarray(batch_logits)
        if tta:
            for flipped in (images[:, :, ::-1], images[:, ::-1]):
                batch_logits = batch_logits + np.asarray(forward(flipped)[0])
            batch_logits = batch_logits / 3
        logits.append(batch_logits)
        features.append(np.asarray(batch_features))
    return np.concatenate(logits), np.concatenate(features)
