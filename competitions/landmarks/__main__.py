import sys

import competitions.landmarks as module
from common.core.cli import main

sys.exit(main(module, sys.argv[1:]))
