import sys

from common.core.cli import main
from competitions.landmarks import COMPETITION

sys.exit(main(COMPETITION, sys.argv[1:]))
