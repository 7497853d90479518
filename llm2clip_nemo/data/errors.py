"""The data layer's user-facing error (its own module so every data module can raise it, layers pointing down)."""
from __future__ import annotations


class DataSourceError(RuntimeError):
    """A data source is unusable: the message names the path or source and the fix.

    Command-line verbs print it as one line and exit with code 2."""
