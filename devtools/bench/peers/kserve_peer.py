"""A REFERENCE PEER, not product code: the model on KServe's Python model server (`kserve`), as
its custom-model guide writes one: a `kserve.Model` subclass whose `load` reads the model and
whose `predict` takes a v2 `InferRequest` (one BYTES tensor of encoded images) and answers an
`InferResponse` (FP32 `probabilities`, one row per image), served by `kserve.ModelServer` with
its defaults: REST (v1 and v2) and v2 gRPC, one worker, `predict` called on the event loop.
KServe's Python server has no batching of its own (KServe batches in a Kubernetes sidecar, the
`batcher` of an InferenceService, which is not part of this package), so each call runs alone.

`.venv-kserve/bin/python -m devtools.bench.peers.kserve_peer --model-dir DIR --model_name NAME
--http_port N --grpc_port M` (devtools/bench/peers/launch.py starts it). KServe parses its own
flags from the command line when it is imported, as its guide's `parents=[...parser]` expects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kserve
from kserve import InferOutput, InferRequest, InferResponse

from devtools.bench.peers.served_model import ServedModel

OUTPUT_NAME = "probabilities"


class Ham10000Model(kserve.Model):  # type: ignore[misc]  # kserve is untyped here
    """The released model behind KServe's v2 protocol."""

    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model: ServedModel | None = None

    def load(self) -> bool:
        self.model = ServedModel(self.model_dir)
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None
                ) -> InferResponse:
        assert self.model is not None, "predict before load"
        images = [bytes(item) for item in payload.inputs[0].as_numpy().ravel()]
        probabilities = self.model.classify(images)
        output = InferOutput(name=OUTPUT_NAME, shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities)
        return InferResponse(response_id=payload.id, model_name=self.name,
                             infer_outputs=[output])


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model-dir", type=Path, required=True, help="one SavedModel version")
    args, _ = parser.parse_known_args()
    model = Ham10000Model(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
