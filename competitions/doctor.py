"""`./run.sh doctor` entry point: common.core.doctor's checks over every competition (common never imports
competitions, so the list is handed in from here)."""
import sys

import competitions
from common.core.doctor import main

if __name__ == "__main__":
    sys.exit(main([competitions.load(name) for name in competitions.NAMES]))
