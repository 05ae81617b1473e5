"""Invoke tasks of corunner: ``inv --list`` shows them. They live in corunner.cli
so that the installed ``corunner`` command offers the same ones."""

from corunner.cli import ns  # noqa: F401
