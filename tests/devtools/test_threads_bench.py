"""devtools.threads_bench: each thread setting measured once per round, in reversed order every
other round, judged by medians over rounds against TensorFlow's own choice."""

from __future__ import annotations

import argparse

import pytest

from devtools import threads_bench


def test_settings_take_turns_and_are_compared_with_tensorflows_choice() -> None:
    order: list[tuple[int, int]] = []
    single_ms = {(0, 0): [20.0, 30.0], (1, 0): [10.0, 18.0], (1, 1): [40.0, 20.0]}

    def take(args: argparse.Namespace, intra: int, inter: int) -> dict[str, float]:
        order.append((intra, inter))
        return {"single_p50_ms": single_ms[(intra, inter)].pop(0)}

    result = threads_bench.run(argparse.Namespace(rounds=2, seconds=1.0), take)
    settings = list(threads_bench.SETTINGS)
    assert order == settings + settings[::-1]
    assert result["medians"]["intra1_inter0"]["single_p50_ms"] == pytest.approx(14.0)
    assert result["over_tensorflow_default"]["intra1_inter0"]["single_p50_ms"] == (
        pytest.approx(14.0 / 25.0))
    assert result["over_tensorflow_default"]["intra0_inter0"]["single_p50_ms"] == 1.0
