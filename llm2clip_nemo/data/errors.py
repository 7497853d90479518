"""The data layer's user-facing error (its own module so every data module can raise it, layers pointing down)."""
from __future__ import annotations

import re

# torch.utils.data re-raises a worker's exception in the main process as `type(e)(text)`, text being
# "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback (most recent call last):\n...
# <module>.<Type>: <message>\n" (torch._utils.ExceptionWrapper.reraise).
_WORKER_WRAPPED = re.compile(r"Caught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback .*\n[\w.]*?\1: (.*?)\n?",
                             re.S)


class DataSourceError(RuntimeError):
    """A data source is unusable: the message names the path or source and the fix.

    Command-line verbs print it as one line and exit with code 2. Raised in a DataLoader worker, it
    reaches the main process as the same type with the message alone (the worker's traceback, which
    torch puts into the message, is kept as `worker_traceback`), so that line stays one line."""

    def __init__(self, *args) -> None:
        self.worker_traceback: str | None = None
        if len(args) == 1 and isinstance(args[0], str) and (m := _WORKER_WRAPPED.fullmatch(args[0])):
            self.worker_traceback = args[0]
            args = (m.group(3),)
        super().__init__(*args)


def data_field(name: str) -> str:
    """How a data message names a stream field when the caller gives no namer: 'data.urls' (a
    StreamConfig built in Python). Recipes pass `functools.partial(config.paths.field_path, cfg)`,
    which gives the recipe's path ('model.train_ds.urls'); verbs that take the spec as a flag name the flag."""
    return f"data.{name}"
