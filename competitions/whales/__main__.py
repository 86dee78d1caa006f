import sys

from common.core.cli import main
from competitions.whales import COMPETITION

sys.exit(main(COMPETITION, sys.argv[1:]))
