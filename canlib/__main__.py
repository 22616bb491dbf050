"""Command-line interface: ``python -m canlib <command> ...``.

Each command lives beside the code it drives and registers itself here through a
``register_cli(subparsers)`` function, so this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: Modules that contribute sub-commands, in the order ``--help`` lists them.
_COMMAND_MODULES = (
    "canlib.data.synthetic",  # make-synthetic
    "canlib.engine.cli",  # train, evaluate
    "canlib.lab.grid",  # ablate
    "canlib.engine.weights",  # export
    "canlib.lab.pretrain",  # export-trunk
    "canlib.lab.decide",  # decide
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m canlib",
        description="Collaborative Attention Network (CAN) for person re-ID: data, training, evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:  # an import error is a bug to see, never a silently missing command
        importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
