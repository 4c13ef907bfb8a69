"""dermserve: a HAM10000 skin-lesion classifier served over gRPC, with batch jobs and a trainer.

One namespace, one package per concern (docs/architecture.md draws how they may import each
other, and tests/test_layers.py holds them to it):

    dermserve.core      the gRPC-free core: image checks, the classifier, backends, errors, settings
    dermserve.protocol  the proto <-> domain conversions that the front and its clients share
    dermserve.client    connection settings and channels for the CLI and the web page
    dermserve.batch     the batch-job domain (jobs, their store in Redis, queues, results)
    dermserve.service   the gRPC front (`dermserve-server`)
    dermserve.worker    the RQ worker process (`dermserve-worker`)
    dermserve.cli       the command line (`dermserve`)
    dermserve.web       the clinicians' page (`dermserve-web`)
    dermserve.trainer   training, evaluation and publishing (`dermserve-train`)
    dermserve.v1        the gRPC stubs, generated from protos/ by `make proto` (never committed)

Each component's third-party dependencies are an extra: `pip install 'dermserve[server]'`,
`[worker]`, `[trainer]`, `[web]`, `[client]`.
"""

__version__ = "0.1.0"
