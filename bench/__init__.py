"""corunner's benchmark suite: ``python3 bench/run.py`` (see run.py)."""
