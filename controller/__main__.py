"""`python -m controller` is `gitops-canary`."""

import sys

from controller.cli import main

sys.exit(main())
