"""``python3 -m pginfra_host.health``: the program, as its entry point runs it."""

import sys

from pginfra_host.health.cli import main

sys.exit(main())
