"""Offline evaluation of the knowledge-base reply engine: `python -m eval --help`."""
