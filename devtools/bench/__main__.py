"""`python -m devtools.bench`: see devtools.bench.run."""

from devtools.bench.run import main

main()
