"""A REFERENCE PEER for the benchmark, not product code: the image classifier most teams write
first, so `make bench` can show what dermserve's batching and decoding buy against it.

An HTTP server (the standard library's ThreadingHTTPServer, a thread per request, as Flask's
development server) that loads the SavedModel as a Keras model (`keras.layers.TFSMLayer` in a
`keras.Model`) and, per request, decodes the body with Pillow at full size, resizes it to the
input size, and calls `model.predict` on a batch of one. No micro-batching, no reduced-scale
decode, no tuning of TensorFlow's thread pools, no validation beyond what Pillow raises; nothing
dermserve serves goes through it.

    POST /classify (body: JPEG or PNG bytes) -> 200 {"probabilities": [...]}

`python -m devtools.bench.naive_peer --model-dir models/ham10000/2 --port N` (devtools.bench.run
starts it).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermserve.core.model_config import ModelConfig

PATH = "/classify"


def load_keras_model(model_dir: Path, height: int, width: int) -> Any:
    """The SavedModel's serving signature as a Keras model with one uint8 image input."""
    import keras

    layer = keras.layers.TFSMLayer(str(model_dir), call_endpoint="serving_default")
    image = keras.Input((height, width, 3), dtype="uint8", name="image")
    return keras.Model(image, layer(image)["probabilities"])


def handler_for(model: Any, size: tuple[int, int]) -> type[BaseHTTPRequestHandler]:
    class ClassifyHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a client library's session would

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            image = Image.open(io.BytesIO(body)).convert("RGB").resize(size)
            probabilities = model.predict(np.asarray(image)[None], verbose=0)[0]
            self.reply(json.dumps({"probabilities": probabilities.tolist()}).encode())

        def reply(self, payload: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet: one log line per request would be most of the peer's output."""

    return ClassifyHandler


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # connections waiting for accept(): werkzeug's (Flask's) backlog


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.naive_peer",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="one SavedModel version")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    spec = ModelConfig.read(args.model_dir).input
    model = load_keras_model(args.model_dir, spec.height, spec.width)
    PeerServer(("127.0.0.1", args.port), handler_for(model, (spec.width, spec.height))
               ).serve_forever()


if __name__ == "__main__":
    main()
