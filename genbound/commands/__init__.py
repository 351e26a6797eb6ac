"""Subcommands of the ``genbound`` CLI; see :mod:`genbound.cli`.

The top layer (docs/architecture.md). Each command module imports the library inside its ``run`` function,
not at its top: building the parser for ``genbound --help`` (or one command's arguments) must import neither
torch nor the library's heavy modules (tests/test_structure.py checks it). These are the only imports inside
functions besides the optional extras (onnx, ray, submitit).
"""
