"""``python -m featcache``: a thin command line over the library (parse, call, print).

This module dispatches and turns errors into one line and an exit code; each command lives with its
siblings (:mod:`featcache.cli_extract`, :mod:`featcache.cli_heads`, :mod:`featcache.cli_finetune`,
:mod:`featcache.cli_rank`) as
``(name, help, examples, add_arguments, run)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import FeatcacheError

Command = tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def commands() -> list[Command]:
    from . import cli_extract, cli_finetune, cli_heads, cli_rank

    return [*cli_extract.COMMANDS, *cli_heads.COMMANDS, *cli_finetune.COMMANDS, *cli_rank.COMMANDS]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2, like every other bad input (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="featcache",
        description="Extract frozen-backbone features once into HDF5; train classical heads on them in seconds.",
        epilog="Run `python -m featcache COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"featcache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, help_, examples, add_args, func in commands():
        p = sub.add_parser(name, help=help_, description=help_, epilog=examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_args(p)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FeatcacheError as exc:
        print(f"featcache {args.command}{_rank()}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"featcache {args.command}: interrupted; finished rows are kept, re-run the same command to resume",
              file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions: one line, nothing half-written (writes are atomic)
        if os.environ.get("FEATCACHE_DEBUG"):
            raise
        print(f"featcache {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _rank() -> str:
    """`` (rank 1/4)`` under torchrun, so the failing rank is named; empty in a single process."""
    from .launch import Launch

    try:
        launch = Launch.from_env()
    except FeatcacheError:
        return ""
    return f" ({launch.label()})" if launch else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
