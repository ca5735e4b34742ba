"""The ``eartalk`` command line. Subcommands come from the plugin registry."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from eartalk import __version__
from eartalk.core.errors import EartalkError


def build_parser() -> argparse.ArgumentParser:
    from eartalk.core.registry import get_registry

    parser = argparse.ArgumentParser(
        prog="eartalk",
        description="Streaming, controllable, audio-driven talking-head generation.",
    )
    parser.add_argument("--version", action="version", version=f"eartalk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(get_registry().infos("command"), key=lambda i: i.name):
        command = info.cls()
        p = sub.add_parser(info.name, help=info.cls.help, description=info.cls.help)
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eartalk`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("eartalk").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # Lightning prints its own banner lines; keep the terminal readable
        for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args._command.run(args) or 0)
    except EartalkError as err:
        if verbose:
            raise
        print(f"eartalk: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eartalk: interrupted", file=sys.stderr)
        return 130
