"""``python -m modelplane.cli``: the same command as the ``modelplane`` console script."""

import sys

from modelplane.cli.main import main

sys.exit(main())
