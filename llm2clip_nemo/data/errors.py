"""The data layer's user-facing error (its own module so every data module can raise it, layers pointing down)."""
from __future__ import annotations


class DataSourceError(RuntimeError):
    """A data source is unusable: the message names the path or source and the fix.

    Command-line verbs print it as one line and exit with code 2."""


def data_field(name: str) -> str:
    """How a data message names a stream field when the caller gives no namer: 'data.urls' (a
    StreamConfig built in Python). Recipes pass `functools.partial(config.paths.field_path, cfg)`,
    which gives the recipe's path ('model.train_ds.urls'); verbs that take the spec as a flag name the flag."""
    return f"data.{name}"
