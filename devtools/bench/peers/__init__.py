"""REFERENCE PEERS for the benchmark, not product code: the released model served by the model
servers a hospital's ML team would pick instead of dermserve, each set up the way its own
documentation sets up a custom Python model (`python -m devtools.bench.peers`, `make bench`).

- kserve_peer.py: KServe's Python model server, a `kserve.Model` with `load` and `predict`, over
  its v2 gRPC inference protocol (REST v2 is on too, untimed); it has no batching of its own;
- mlserver_peer.py: MLServer, a custom runtime (`MLModel`) with adaptive batching, over v2 gRPC;
- bento_peer.py: BentoML, a service with an adaptive-batching API, over its HTTP API.

Each peer does the same preprocessing in its own process (served_model.py: a reduced-scale JPEG
decode, upright RGB, then dermserve/core/preprocessing.py's `to_model_input`), runs the
`serving_default` signature with TensorFlow's default threads, and answers the probabilities. KServe
and MLServer run from their own virtualenvs (.venv-kserve, .venv-mlserver: pyproject.toml says why),
BentoML from the project's. launch.py starts them, clients.py calls them, run.py times them beside
dermserve."""
