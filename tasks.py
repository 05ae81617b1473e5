"""Invoke tasks of this checkout: ``inv --list`` shows them.

The product's tasks live in corunner.cli (the installed ``corunner`` command
offers the same ones); the lab's tasks are this repository's test tooling,
given the product's short-flag table (corunner.options) here too.
"""

from invoke import Collection

from corunner.cli import ns as product
from corunner.options import retable
from corunner.testing.tasks import ns as lab

ns = Collection(*product.tasks.values(), retable(lab))
