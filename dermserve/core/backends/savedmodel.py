"""One loaded SavedModel version of the dermserve contract (docs/model-contract.md), in process.

`LoadedVersion.load` loads a version directory, reads its ModelConfig through the `metadata`
signature (as a TF Serving client would, so both backends agree), checks it against the
`serving_default` signature and `assets.extra/dermserve.json`, and warms the graph up with a
one-image predict. Any failure raises `InternalError`: the caller marks that version failed and
keeps serving the others. TensorFlow is imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from dermserve.core.context import (
    AGE_INPUT,
    CONTEXT_INPUTS,
    ContextBatch,
    context_or_neutral,
)
from dermserve.core.errors import (
    DermserveError,
    ExplanationUnsupported,
    InternalError,
    InvalidRequest,
)
from dermserve.core.model_config import (
    CLASS_INDEX_INPUT,
    CLASS_INDEX_OUTPUT,
    CONFIG_OUTPUT,
    CONFIG_RELATIVE_PATH,
    EXPLAIN_SIGNATURE,
    HEATMAP_OUTPUT,
    IMAGE_INPUT,
    LABELS_OUTPUT,
    METADATA_SIGNATURE,
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    PROBE_INPUT,
    SERVING_SIGNATURE,
    ModelConfig,
)

logger = logging.getLogger(__name__)


def reclaim_memory() -> None:
    """Free dropped SavedModels now and hand the freed heap back to the OS. Their graphs and
    functions reference each other, so only a full collection frees them; glibc then keeps the
    freed pages in its arenas unless told to trim (measured on version 3: +297 MB per swap
    without the collection, -19 MB more with the trim)."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)  # glibc only (not musl, macOS)
    if trim is not None:
        trim(0)


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size this process's TensorFlow thread pools (0: TensorFlow's choice, one thread per core).
    TensorFlow fixes them when it runs its first op: later calls with other sizes are logged
    and change nothing (the same sizes again are a no-op)."""
    import tensorflow as tf

    threading = tf.config.threading
    running = (threading.get_intra_op_parallelism_threads(),
               threading.get_inter_op_parallelism_threads())
    if running == (intra_op, inter_op):
        return  # TensorFlow raises even when asked for the sizes it already has
    try:
        threading.set_intra_op_parallelism_threads(intra_op)
        threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        logger.warning("TensorFlow's thread pools were set up before the backend started; "
                       "keeping them (intra-op %d, inter-op %d; asked for %d and %d)",
                       *running, intra_op, inter_op)


class LoadedVersion:
    """A version's signatures, ready to predict. Thread-safe: TF concrete functions may be called
    from many threads at once."""

    def __init__(self, saved_model: Any, config: ModelConfig, freeze: bool = True) -> None:
        self._saved_model = saved_model  # keeps the variables the signatures capture alive
        self.takes_context = takes_context(saved_model.signatures[SERVING_SIGNATURE])
        self._serve = serving_function(saved_model, config, freeze)
        self._explain = saved_model.signatures.get(EXPLAIN_SIGNATURE)
        self.explain_takes_context = self._explain is not None and takes_context(self._explain)
        self.config = config

    @property
    def frozen(self) -> bool:
        """Whether predict runs the serving graph with its variables folded into constants."""
        return isinstance(self._serve, FrozenSignature)

    @classmethod
    def load(cls, version_dir: Path, warm_up_max_batch: int = 1,
             freeze: bool = True) -> LoadedVersion:
        """Load, check, freeze (unless `freeze` is false) and warm up `version_dir` (every batch
        size up to `warm_up_max_batch`); raise InternalError if it breaks the contract."""
        try:
            import tensorflow as tf

            saved_model = tf.saved_model.load(str(version_dir))
            config = read_config(saved_model)
            check_config(version_dir, saved_model, config)
            loaded = cls(saved_model, config, freeze)
            if freeze:
                reclaim_memory()  # the conversion's intermediate graphs, before the warm-up
            loaded.warm_up(warm_up_max_batch)
            return loaded
        except DermserveError as exc:
            raise InternalError(f"cannot load {version_dir}: {exc.message}", exc.reason) from exc
        except Exception as exc:  # TF raises anything; a bad version must not crash
            raise InternalError(f"cannot load {version_dir}: {type(exc).__name__}: {exc}",
                                "MODEL_LOAD_FAILED") from exc

    def predict(self, images: np.ndarray,
                context: ContextBatch | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (probabilities [N, K], ood_scores [N]) for uint8 images [N, H, W, 3] and
        their context rows (neutral when None; ignored unless the version takes context)."""
        check_images(images, self.config)
        import tensorflow as tf

        inputs = {IMAGE_INPUT: images}
        if self.takes_context:
            inputs.update(context_or_neutral(context, len(images)).tensors())
        try:
            out = self._serve(**{name: tf.constant(value) for name, value in inputs.items()})
        except Exception as exc:  # a runtime failure is an internal error
            raise InternalError(f"model call failed: {type(exc).__name__}: {exc}") from exc
        return (np.asarray(out[PROBABILITIES_OUTPUT], np.float32),
                np.asarray(out[OOD_OUTPUT], np.float32))

    def explain(self, images: np.ndarray, class_indices: np.ndarray,
                context: ContextBatch | None = None) -> dict[str, np.ndarray]:
        """The `explain` signature's outputs (heatmap, probabilities, ood_score, class_index) for
        uint8 images [N, H, W, 3], int32 class indices [N] (-1: the top class) and their context
        rows (neutral when None; ignored unless the signature takes context)."""
        check_images(images, self.config)
        if self._explain is None:
            raise ExplanationUnsupported(
                f"this model version has no {EXPLAIN_SIGNATURE!r} signature (it was exported "
                "before explanations existed); ask a version that has one")
        import tensorflow as tf

        inputs = {IMAGE_INPUT: images, CLASS_INDEX_INPUT: np.asarray(class_indices, np.int32)}
        if self.explain_takes_context:
            inputs.update(context_or_neutral(context, len(images)).tensors())
        try:
            out = self._explain(**{name: tf.constant(value) for name, value in inputs.items()})
        except Exception as exc:  # a runtime failure is an internal error
            raise InternalError(f"explain call failed: {type(exc).__name__}: {exc}") from exc
        return {name: np.asarray(out[name]) for name in
                (HEATMAP_OUTPUT, PROBABILITIES_OUTPUT, OOD_OUTPUT, CLASS_INDEX_OUTPUT)}

    def warm_up(self, max_batch: int = 1) -> None:
        """Predict once at every batch size from `max_batch` down to 1 (and explain one image,
        where the version can) before the version answers anyone. TensorFlow sets up kernels
        and keeps buffers per input shape: on version 3 the first batch of 32 grew the process
        by about 560 MB and the other 31 sizes by about 135 MB more (`python -m
        devtools.bench.warm_up_bench`), so a server that met its batch sizes one by one under load
        kept growing for minutes, and each first call at a new size paid that set-up. Largest
        first, so the allocator reserves its peak once. TF Serving's counterpart is a version's
        assets.extra/tf_serving_warmup_requests."""
        spec = self.config.input
        for size in range(max(1, max_batch), 0, -1):
            blank = np.zeros((size, spec.height, spec.width, 3), np.uint8)
            probabilities, _ = self.predict(blank)
            if probabilities.shape != (size, len(self.config.labels)):
                raise InternalError(
                    f"serving_default returned probabilities of shape {probabilities.shape}, "
                    f"expected ({size}, {len(self.config.labels)})", "BAD_MODEL_SIGNATURE")
        blank = np.zeros((1, spec.height, spec.width, 3), np.uint8)
        if self._explain is not None:
            heatmap = self.explain(blank, np.full([1], -1, np.int32))[HEATMAP_OUTPUT]
            if heatmap.ndim != 3 or heatmap.shape[0] != 1:
                raise InternalError(f"explain returned a heatmap of shape {heatmap.shape}, "
                                    "expected (1, h, w)", "BAD_MODEL_SIGNATURE")


class FrozenSignature:
    """The serving signature with its variables folded into constants: called and answering like
    the signature (keyword inputs, a dict of outputs). `call_flat` runs the frozen graph on the
    input tensors in `input_names` order and returns its outputs flat. Thread-safe, as concrete
    functions are."""

    def __init__(self, call_flat: Callable[[list[Any]], Sequence[Any]], output_structure: Any,
                 input_names: Sequence[str] = (IMAGE_INPUT,)) -> None:
        self._call_flat = call_flat
        self._output_structure = output_structure
        self._input_names = tuple(input_names)

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        import tensorflow as tf

        flat = self._call_flat([inputs[name] for name in self._input_names])
        return cast(dict[str, Any], tf.nest.pack_sequence_as(self._output_structure, flat))


def serving_function(saved_model: Any, config: ModelConfig, freeze: bool) -> Any:
    """What predict calls: the loaded SavedModel's serving signature, frozen when `freeze` is
    true and freezing works (`freeze_serving`)."""
    signature = saved_model.signatures[SERVING_SIGNATURE]
    return freeze_serving(signature, config) if freeze else signature


def freeze_serving(signature: Any, config: ModelConfig) -> Any:
    """`signature` with its variables folded into constants, or `signature` itself when that
    fails or answers differently (logged). With weights as constants, TensorFlow's graph
    optimiser folds each batch normalisation into its convolution and fuses bias and
    activation into it (oneDNN), which it cannot do to variables: `make bench` measures both
    (`raw.as_loaded` beside the frozen sweep; bench-results/NOTES.md, "Freezing the graph").
    It also skips the Python walk over every captured variable (795 on the released ensemble)
    that a loaded signature makes per call. TF Serving runs the SavedModel's variables as they
    are."""
    import tensorflow as tf

    try:
        # Not in TensorFlow's public API, but the converter its own tools (TFLite) rely on.
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        specs = signature.structured_input_signature[1]
        names = sorted(specs)
        traced = tf.function(lambda *tensors: signature(**dict(zip(names, tensors, strict=True))),
                             input_signature=[tf.TensorSpec(specs[name].shape, specs[name].dtype)
                                              for name in names])
        concrete = traced.get_concrete_function()
        graph = convert_variables_to_constants_v2(concrete)
        # Its flat call, not `graph(image)`: a frozen function has no structured signature, so
        # its public call first fails to bind, formats the image tensor into the error it then
        # discards (py-spy on a server at concurrency 1 showed it), and only then calls this. A
        # TensorFlow that renames it fails the check below, and the version serves unfrozen.
        frozen = FrozenSignature(lambda tensors: graph._call_flat(tensors, graph.captured_inputs),
                                 concrete.structured_outputs, names)
        check_same_answers(signature, frozen, config)
    except Exception as exc:  # noqa: BLE001 - TF raises anything; the signature still serves
        logger.warning("serving the version's variables as they are: cannot freeze its graph "
                       "(%s: %s)", type(exc).__name__, exc)
        return signature
    return frozen


FREEZE_CHECK_IMAGES = 2  # images; two, so that a batch dimension mix-up shows
FREEZE_CHECK_TOLERANCE = 1e-4  # absolute, on probabilities and OOD scores; float32 reordering


def check_same_answers(signature: Any, frozen: FrozenSignature, config: ModelConfig) -> None:
    """Raise ValueError unless `frozen` answers like `signature` on fixed noise images."""
    import tensorflow as tf

    spec = config.input
    noise = np.random.default_rng(0).integers(
        0, 256, (FREEZE_CHECK_IMAGES, spec.height, spec.width, 3), np.uint8)
    inputs = {IMAGE_INPUT: tf.constant(noise)}
    if takes_context(signature):  # two different rows, so that a context mix-up shows
        ages = np.linspace(20.0, 70.0, FREEZE_CHECK_IMAGES, dtype=np.float32)
        rows = dataclasses.replace(ContextBatch.neutral(FREEZE_CHECK_IMAGES), age_years=ages)
        inputs.update({name: tf.constant(value) for name, value in rows.tensors().items()})
    expected, got = signature(**inputs), frozen(**inputs)
    for name in (PROBABILITIES_OUTPUT, OOD_OUTPUT):
        difference = float(np.max(np.abs(np.asarray(expected[name]) - np.asarray(got[name]))))
        if not difference <= FREEZE_CHECK_TOLERANCE:
            raise ValueError(f"the frozen graph's {name} differs by {difference:.2g}")


def read_config(saved_model: Any) -> ModelConfig:
    """The version's ModelConfig, from its `metadata` signature."""
    import tensorflow as tf

    out = saved_model.signatures[METADATA_SIGNATURE](**{PROBE_INPUT: tf.zeros([1], tf.int32)})
    config = ModelConfig.from_json(out[CONFIG_OUTPUT].numpy()[0])
    labels = tuple(label.decode("utf-8") for label in out[LABELS_OUTPUT].numpy()[0])
    if labels != config.labels:
        raise InternalError(f"metadata labels {labels} differ from the config's {config.labels}",
                            "BAD_MODEL_CONFIG")
    return config


def check_config(version_dir: Path, saved_model: Any, config: ModelConfig) -> None:
    """The config must match the serving signature's input and, if present, assets.extra."""
    spec = saved_model.signatures[SERVING_SIGNATURE].structured_input_signature[1][IMAGE_INPUT]
    expected = [None, config.input.height, config.input.width, 3]
    if spec.shape.as_list() != expected or spec.dtype.name != "uint8":
        raise InternalError(f"serving_default image is {spec.dtype.name}{spec.shape.as_list()}, "
                            f"config says uint8{expected}", "BAD_MODEL_SIGNATURE")
    for signature in saved_model.signatures.values():  # raises when one is half-declared
        takes_context(signature)
    if (version_dir / CONFIG_RELATIVE_PATH).exists():
        on_disk = ModelConfig.read(version_dir)
        if on_disk != config:
            raise InternalError(f"{CONFIG_RELATIVE_PATH} differs from the metadata signature",
                                "BAD_MODEL_CONFIG")


CONTEXT_DTYPES = {name: "int32" for name in CONTEXT_INPUTS} | {AGE_INPUT: "float32"}
"""What each context input must be (docs/model-contract.md), each of shape [N]."""


def takes_context(signature: Any) -> bool:
    """Whether a loaded signature (`serving_default`, `explain`) takes the context inputs;
    BAD_MODEL_SIGNATURE when it declares some but not all of them, or any of the wrong dtype or
    shape."""
    specs = signature.structured_input_signature[1]
    declared = {name: (specs[name].dtype.name, specs[name].shape.as_list())
                for name in CONTEXT_INPUTS if name in specs}
    return check_context_inputs(declared)


def check_context_inputs(declared: dict[str, tuple[str, list[int | None]]]) -> bool:
    """`declared` (name: (dtype, shape)) of a signature's context inputs, checked against the
    contract; True when all three are there, False when none is (either backend calls it)."""
    if not declared:
        return False
    expected = {name: (dtype, [None]) for name, dtype in CONTEXT_DTYPES.items()}
    if declared != expected:
        raise InternalError(f"serving_default declares context inputs {declared}, the contract "
                            f"says all of {expected}", "BAD_MODEL_SIGNATURE")
    return True


def check_images(images: np.ndarray, config: ModelConfig) -> None:
    """Reject a batch the version cannot take, with a message that says why."""
    expected = (config.input.height, config.input.width, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise InvalidRequest(f"images must be uint8 [N, {expected[0]}, {expected[1]}, 3], got "
                             f"{images.dtype}{list(images.shape)}", "BAD_MODEL_INPUT")
