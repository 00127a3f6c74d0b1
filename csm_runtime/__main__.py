"""`python -m csm_runtime ...` is the `csm-runtime` command."""

import sys

from csm_runtime.cli import main

sys.exit(main())
