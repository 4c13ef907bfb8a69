"""`make bench` and its references: the serving benchmark and its harness (`python -m
devtools.bench`), the naive peer and the gRPC floor it compares with, the batch job, Explain,
warm-up and per-version cost benchmarks, and the web page's load time and screenshots."""
