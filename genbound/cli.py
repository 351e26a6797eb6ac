"""The ``genbound`` command: one subcommand per job, each in ``genbound/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Conventions shared by every command: ``--json`` writes machine-readable output to stdout, ``--device``
picks cpu / cuda, and bad input raises :class:`~genbound.errors.GenboundError`, printed here as one line
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import GenboundError

# Order is the order of ``genbound --help``.
COMMANDS = ["demo", "list", "train", "compare", "bounds", "spectra", "hessian", "landscape"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genbound",
        description="Which fine-tuning method generalizes, and why: train, bound and diagnose adapters.",
    )
    parser.add_argument("--version", action="version", version=f"genbound {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"genbound.commands.{name.replace('-', '_')}")
        description = getattr(module, "DESCRIPTION", module.HELP)
        # A description written with line breaks (examples, lists) keeps them; a plain paragraph is reflowed.
        formatter = argparse.RawDescriptionHelpFormatter if "\n" in description else argparse.HelpFormatter
        p = sub.add_parser(name, help=module.HELP, description=description, formatter_class=formatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # argument types (positive_int, sample_count) raise GenboundError
        if not getattr(args, "_run", None):
            parser.print_help()
            return 0
        return int(args._run(args) or 0)
    except GenboundError as exc:
        print(f"genbound: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("genbound: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
