"""The ``modelplane`` command line: the composition root that wires every process and client action together.

Nothing imports this package (the import contract in pyproject.toml says so); it imports everything. ``main``
holds the entry point (``modelplane`` and ``python -m modelplane.cli``); each other module is one command.
"""
