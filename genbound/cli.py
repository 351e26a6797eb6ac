"""The ``genbound`` command: one subcommand per job, each in ``genbound/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Conventions shared by every command: ``--json`` writes machine-readable output to stdout, ``--device``
picks cpu / cuda, and bad input raises :class:`~genbound.core.errors.GenboundError`, printed here as one line
with exit code 2 and no traceback. So are the failures that come from the machine or from numbers too
large to compute with: an OSError (disk full, read-only filesystem, permission, a path under a file, a name
too long) names the path and what to do; an OverflowError or MemoryError says which input to check. A closed
stdout (``genbound list --json | head``) ends the command quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from .core.errors import GenboundError, os_error_message

# Order is the order of ``genbound --help``.
COMMANDS = ["demo", "list", "train", "cost", "evaluate", "export", "compare", "bounds", "certify", "spectra", "hessian",
            "landscape", "report"]


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None, *, all_arguments: bool = True) -> argparse.ArgumentParser:
    """The full parser; with ``all_arguments=False`` only the subcommand ``only`` gets its arguments.

    Command modules import nothing heavy at the top; their ``add_arguments`` may (method names, defaults).
    ``main`` therefore adds the arguments of the one command being run, so that ``genbound --help`` lists
    the commands without loading torch.
    """
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
        if all_arguments or name == only:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _stdout_closed() -> int:
    # Python would report the broken pipe again when it flushes stdout at exit: point stdout at /dev/null.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away


def _error(message: str) -> int:
    try:
        print(f"genbound: error: {GenboundError(message)}", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return GenboundError.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_in(words), all_arguments=False)
        args = parser.parse_args(words)  # argument types (positive_int, sample_count) raise GenboundError
        if not getattr(args, "_run", None):
            parser.print_help()
            return 0
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except GenboundError as exc:
        print(f"genbound: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as exc:
        return _error(os_error_message(exc))
    except OverflowError as exc:
        return _error(f"a number overflowed ({exc}); an input holds a value too large to compute with "
                      "(check alpha, scales and sizes in the checkpoint or the configuration)")
    except MemoryError:
        return _error("out of memory; an input claims sizes beyond this machine (check the checkpoint, or use "
                      "smaller --samples / a smaller model)")
    except KeyboardInterrupt:
        print("genbound: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
