"""`make soak`: the whole stack under mixed load while faults hit it (`python -m devtools.soak`),
its load, its faults, its batch job and its report."""
