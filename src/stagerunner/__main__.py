"""``python -m stagerunner``: see ``stagerunner.cli``."""

import sys

from stagerunner.cli import main

if __name__ == "__main__":
    sys.exit(main())
