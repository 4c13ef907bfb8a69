"""Developer and operator tools, outside the runtime packages: the local stack (`make run`), the
redis-server launcher shared by the stack, the benchmarks and the tests, the untrained stand-in
model exporter, and the benchmarks (`make bench`). Nothing in dermserve/ imports from here."""
