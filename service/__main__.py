"""``python -m improv_store.service [serve|verify] ...``: the server's commands (default serve)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
