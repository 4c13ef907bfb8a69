"""`python -m devtools.stack`: see devtools.stack.launcher."""

from devtools.stack.launcher import main

main()
