"""A REFERENCE PEER, not product code: the model on BentoML (`bentoml`), as its service guide
writes one: a `@bentoml.service` class that loads the model in `__init__`, with one
`@bentoml.api(batchable=True)` method (adaptive batching: BentoML's dispatcher gathers single
calls into one list of images, up to `max_batch_size`) that takes PIL images (multipart file
uploads, which BentoML opens) and answers one row of probabilities per image, over its HTTP API,
one worker process.

`DERMSERVE_PEER_MODEL_DIR=DIR bentoml serve devtools.bench.peers.bento_peer:Ham10000 --host
127.0.0.1 --port N` from the repository root (devtools/bench/peers/launch.py starts it):
BentoML builds the service class itself, so the version directory comes from the environment.

    POST /classify (multipart/form-data, one file field `images`) -> 200 [[p0, ..., p6]]
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
from PIL.Image import Image

from devtools.bench.peers.served_model import MODEL_DIR_ENV, ServedModel

MAX_BATCH_SIZE = 32  # images; the largest micro-batch dermserve's server may be given
CALL_TIMEOUT_S = 120  # seconds; BentoML's default (60) is under the benchmark's slowest call


@bentoml.service(workers=1, traffic={"timeout": CALL_TIMEOUT_S})
class Ham10000:
    """The released model behind BentoML's HTTP API."""

    def __init__(self) -> None:
        self.model = ServedModel(Path(os.environ[MODEL_DIR_ENV]))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE)  # type: ignore[untyped-decorator]
    def classify(self, images: list[Image]) -> np.ndarray:
        return self.model.probabilities(np.stack([self.model.input_of(i) for i in images]))
