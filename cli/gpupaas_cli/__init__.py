"""The `gpupaas` command: the portal's JSON API from a shell (see main.py)."""

__version__ = "0.1.0"
