"""``python -m engine.cli``: the same command as ``salesbot``."""

import sys

from engine.cli.main import main

sys.exit(main())
