"""The ``eartalk`` command line. Subcommands come from the plugin registry."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from eartalk import __version__
from eartalk.core.errors import EartalkError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description/epilog line breaks and appends ``(default: X)`` to options that have a
    meaningful default (not None, False or an empty list, and not already stated in the help)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        # Lines that start with a space are pre-formatted (tables, examples); others are wrapped.
        return "\n".join(line if (not line.strip() or line[0] == " ") else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or default is None or default is False
                or default == argparse.SUPPRESS or default == []
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


def build_parser() -> argparse.ArgumentParser:
    from eartalk.core.registry import get_registry

    parser = argparse.ArgumentParser(
        prog="eartalk",
        description="Streaming, controllable, audio-driven talking-head generation.\n"
                    "`eartalk COMMAND --help` describes each command; `eartalk plugins` lists what is installed.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"eartalk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, tracebacks, and the native logs of MediaPipe/TFLite and Lightning")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(get_registry().infos("command"), key=lambda i: i.name):
        command = info.cls()
        description = getattr(info.cls, "description", "") or info.cls.help
        p = sub.add_parser(info.name, help=info.cls.help, description=description, formatter_class=HelpFormatter)
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eartalk`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    if verbose:  # read by eartalk.core.media.face.quiet_native_stderr
        os.environ["EARTALK_VERBOSE"] = "1"
    else:  # what native libraries honour (TensorFlow Lite, glog), set before they are imported
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("GLOG_minloglevel", "2")
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
