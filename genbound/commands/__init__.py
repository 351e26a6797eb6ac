"""Subcommands of the ``genbound`` CLI; see :mod:`genbound.cli`."""
