"""`python -m devtools.between_calls --out FILE`: what a server's work around the model costs
when it runs between model calls, as it does at concurrency 1, against the same work in a
tight loop, as the raw reference of devtools.bench measures it. Prints and writes JSON.

In this process, on the benchmark version's serving graph frozen as the front serves it:
- decoding: the benchmark image decoded back to back, against the same decode right after a
  one-image model call (the model has just filled the caches with its weights and activations);
- the model call: a one-image call back to back, against the same call right after a decode
  (which has just filled the caches with Pillow's work);
- its input: one tensor reused every time (the raw reference), against a fresh tensor made from
  the decoded array per call (what a server does); the two interleaved call by call, so that the
  machine's drift favours neither.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core import defaults
from core.backends.savedmodel import configure_threads, serving_function
from core.image.decoding import decode_for_model
from core.image.limits import ImageLimits
from core.model_config import ModelConfig
from devtools.bench import add_target_arguments, find_target, publish, summary

DEFAULT_CALLS = 400  # per figure; a model call takes 10-15 ms here, so about 6 s each
WARM_UP = 20  # calls before timing, for each figure


def timed(call: Callable[[], object], before: Callable[[], object] | None = None,
          calls: int = DEFAULT_CALLS) -> list[float]:
    """Latencies of `call`, each run right after `before` (untimed) when given."""
    latencies = []
    for index in range(WARM_UP + calls):
        if before is not None:
            before()
        started = time.perf_counter()
        call()
        if index >= WARM_UP:
            latencies.append(time.perf_counter() - started)
    return latencies


def interleaved(first: Callable[[], object], second: Callable[[], object],
                calls: int = DEFAULT_CALLS) -> tuple[list[float], list[float]]:
    """Latencies of `first` and `second`, called in turn."""
    both: tuple[list[float], list[float]] = ([], [])
    for index in range(WARM_UP + calls):
        for call, latencies in zip((first, second), both, strict=True):
            started = time.perf_counter()
            call()
            if index >= WARM_UP:
                latencies.append(time.perf_counter() - started)
    return both


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    target = find_target(args.model_base, args.model_name, args.version, args.image)
    config = ModelConfig.read(target.version_dir)
    configure_threads(defaults.DEFAULT_INTRA_OP_THREADS, defaults.DEFAULT_INTER_OP_THREADS)
    serve = serving_function(tf.saved_model.load(str(target.version_dir)), config, True)
    limits = ImageLimits()

    def decode() -> np.ndarray:
        return decode_for_model(target.image, limits, config.input)

    pixels = decode()[None]
    reused = tf.constant(pixels)
    alone = summary(timed(decode, calls=args.calls))
    after_model = summary(timed(decode, lambda: serve(image=reused), args.calls))
    model_alone = summary(timed(lambda: serve(image=reused), calls=args.calls))
    model_after_decode = summary(timed(lambda: serve(image=reused), decode, args.calls))
    same_tensor, fresh_tensor = interleaved(lambda: serve(image=reused),
                                            lambda: serve(image=tf.constant(pixels)), args.calls)
    same, fresh = summary(same_tensor), summary(fresh_tensor)
    return {"benchmark": "between_calls", "model": {"name": target.model_name,
                                                   "version": target.version},
            "image_bytes": len(target.image),
            "decode": {"back_to_back": alone, "right_after_a_model_call": after_model,
                       "p50_after_over_alone": after_model["p50_ms"] / alone["p50_ms"]},
            "model_call": {"back_to_back": model_alone, "right_after_a_decode": model_after_decode,
                           "p50_after_minus_alone_ms": (model_after_decode["p50_ms"]
                                                        - model_alone["p50_ms"])},
            "model_input": {"one_tensor_reused": same, "fresh_tensor_per_call": fresh,
                            "p50_fresh_minus_reused_ms": fresh["p50_ms"] - same["p50_ms"]}}


def report_lines(result: dict[str, Any]) -> list[str]:
    decode, model, inputs = result["decode"], result["model_call"], result["model_input"]
    return [f"decode p50: {decode['back_to_back']['p50_ms']:.2f} ms back to back, "
            f"{decode['right_after_a_model_call']['p50_ms']:.2f} ms right after a model call "
            f"({decode['p50_after_over_alone']:.2f}x)",
            f"model call p50: {model['back_to_back']['p50_ms']:.2f} ms back to back, "
            f"{model['right_after_a_decode']['p50_ms']:.2f} ms right after a decode "
            f"({model['p50_after_minus_alone_ms']:+.2f} ms)",
            f"model call p50: {inputs['one_tensor_reused']['p50_ms']:.2f} ms on one tensor "
            f"reused, {inputs['fresh_tensor_per_call']['p50_ms']:.2f} ms on a fresh one "
            f"({inputs['p50_fresh_minus_reused_ms']:+.2f} ms)"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.between_calls", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser, image_help="image to decode (default: a 600x450 JPEG)")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help="per figure")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    publish(args.out, result, report_lines(result))


if __name__ == "__main__":
    main()
