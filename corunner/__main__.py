"""``python -m corunner``: the same tasks as ``inv`` and the ``corunner`` command."""

from .cli import program

program.run()
