"""A REFERENCE PEER, not product code: the model on MLServer (`mlserver`), as its custom-runtime
guide writes one: an `MLModel` subclass whose `load` reads the model (the folder in the model
settings' `parameters.uri`) and whose `predict` takes a v2 `InferenceRequest` (one BYTES tensor
of encoded images) and answers FP32 `probabilities` (NumpyCodec), with adaptive batching on
(`max_batch_size`, `max_batch_time` in model-settings.json), gRPC messages up to dermserve's
request limit, and MLServer's other defaults: one parallel inference worker process beside the
main one.

`.venv-mlserver/bin/python -m devtools.bench.peers.mlserver_peer --model-dir DIR --workdir W
--model-name NAME --http-port N --grpc-port M --metrics-port K` writes settings.json and
model-settings.json into W and then becomes `mlserver start W` (devtools/bench/peers/launch.py
starts it, with the repository on PYTHONPATH so the workers can import this runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from devtools.bench.peers.served_model import ServedModel

OUTPUT_NAME = "probabilities"
MAX_BATCH_SIZE = 32  # images; the largest micro-batch dermserve's server may be given
MAX_BATCH_TIME_S = 0.010  # seconds a batch waits for company: dermserve's DEFAULT_BATCH_MAX_WAIT_MS
MAX_MESSAGE_BYTES = 10 * 1024 * 1024 + 64 * 1024  # dermserve's own limit on a request (an image
# of dermserve/core/defaults.py's DEFAULT_MAX_IMAGE_BYTES and its MESSAGE_OVERHEAD_BYTES):
# MLServer's default is gRPC's 4 MiB, under the benchmark's 12 MP phone photo (KServe's default,
# 8 MiB, holds it)
RUNTIME = "devtools.bench.peers.mlserver_peer.Ham10000Runtime"  # its import path, not __main__'s


class Ham10000Runtime(MLModel):  # type: ignore[misc]  # mlserver is untyped here
    """The released model behind MLServer's v2 protocol."""

    async def load(self) -> bool:
        self._served = ServedModel(Path(self.settings.parameters.uri))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # The BYTES items as sent (NumpyCodec would split them into single bytes); under adaptive
        # batching, one item per merged request.
        encoded = [bytes(item) for item in payload.inputs[0].data.root]
        probabilities = self._served.classify(encoded)
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(OUTPUT_NAME, probabilities)])


def write_settings(args: argparse.Namespace) -> None:
    """settings.json (the server) and model-settings.json (the model) into `args.workdir`."""
    server = {"host": "127.0.0.1", "http_port": args.http_port, "grpc_port": args.grpc_port,
              "metrics_port": args.metrics_port, "grpc_max_message_length": MAX_MESSAGE_BYTES}
    model = {"name": args.model_name, "implementation": RUNTIME,
             "max_batch_size": MAX_BATCH_SIZE, "max_batch_time": MAX_BATCH_TIME_S,
             "parameters": {"uri": str(args.model_dir.resolve())}}
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "settings.json").write_text(json.dumps(server), encoding="utf-8")
    (args.workdir / "model-settings.json").write_text(json.dumps(model), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.peers.mlserver_peer",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="one SavedModel version")
    parser.add_argument("--workdir", type=Path, required=True, help="where the settings go")
    parser.add_argument("--model-name", required=True)
    for flag in ("--http-port", "--grpc-port", "--metrics-port"):
        parser.add_argument(flag, type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    write_settings(args)
    mlserver = str(Path(sys.executable).with_name("mlserver"))
    os.execv(mlserver, [mlserver, "start", str(args.workdir)])


if __name__ == "__main__":
    main()
