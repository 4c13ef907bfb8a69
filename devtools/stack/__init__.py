"""The local stack `make run` starts: the launcher (`python -m devtools.stack`), its supervisor
and console, the redis-server launcher, free ports, health probes, a launched stack for tests,
and the untrained stand-in model."""
