"""`python -m devtools.soak`: see devtools.soak.run."""

import sys

from devtools.soak.run import main

sys.exit(main())
