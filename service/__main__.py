"""``python -m improv_store.service`` runs ``improv-store serve``."""

import argparse
import sys

from .cli import add_parser

parser = argparse.ArgumentParser(prog="python -m improv_store.service")
add_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["serve", *sys.argv[1:]])
sys.exit(args.handler(args))
