"""Test machinery that ships beside the product but is not part of its face.

As ``fabric.testing`` does for Fabric: the local lab of real OpenSSH nodes
(:mod:`corunner.testing.lab`) and its Invoke tasks
(:mod:`corunner.testing.tasks`), used by this repository's ``tasks.py``, its
tests and its benchmarks. A user's ``corunner --list`` does not show them.
"""
