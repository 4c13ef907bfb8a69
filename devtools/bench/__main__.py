"""`python -m devtools.bench`: see devtools.bench.harness."""

from devtools.bench.harness import main

main()
