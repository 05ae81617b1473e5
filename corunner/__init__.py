"""corunner: run one program on many nodes over SSH, watch them, bring the results home."""

__version__ = "0.1.0"
