"""`python -m edgeprune.cli`, as the `compress` script."""

import sys

from edgeprune.cli import main

sys.exit(main())
