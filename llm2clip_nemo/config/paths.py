"""The path a user types for a field of a config component, for messages that name the field.

A component (a config dataclass) sits at different places in different recipes: the stream's
`StreamConfig` is `model.train_ds` in pretrain, the teacher's `TeacherConfig` is `model.teacher`
there and `teacher` in extract. The loader records each component's place on the instance
(`assign_paths`, called by `loader.run_validators`); every message naming a field asks
`field_path(cfg, "slots")` -> 'model.train_ds.slots', so it names what the user can type as an
override. A component built directly in Python has no recorded place: its class's `CONFIG_PATH`
(a ClassVar, e.g. 'data' for StreamConfig) is used, and '' (the bare field name) without one.
"""
from __future__ import annotations

import dataclasses

PATH_ATTR = "_config_path"
"""Instance attribute holding the recorded path (not a dataclass field: never in YAML or checkpoints)."""
ALIAS_ATTR = "_config_aliases"
"""Instance attribute {field: full path} for a component assembled from several user sections (the
validation stream: urls from model.validation_ds, seed from model.train_ds)."""


def config_path(cfg) -> str:
    """The dotted path of component `cfg` ('model.train_ds'): the recorded one, else its class's
    `CONFIG_PATH`, else '' (a recipe's root schema)."""
    recorded = getattr(cfg, PATH_ATTR, None)
    return recorded if recorded is not None else getattr(type(cfg), "CONFIG_PATH", "")


def field_path(cfg, name: str) -> str:
    """The path of field `name` of component `cfg` as the user types it: 'model.train_ds.slots' (a
    recorded alias first: see `set_config_path`)."""
    alias = (getattr(cfg, ALIAS_ATTR, None) or {}).get(name)
    if alias is not None:
        return alias
    prefix = config_path(cfg)
    return f"{prefix}.{name}" if prefix else name


def set_config_path(cfg, path: str, aliases: dict[str, str] | None = None):
    """Record `path` as the place of component `cfg` (frozen dataclasses too), and `aliases` {field:
    full path} for fields the user sets elsewhere; returns `cfg`."""
    object.__setattr__(cfg, PATH_ATTR, path)
    if aliases is not None:
        object.__setattr__(cfg, ALIAS_ATTR, dict(aliases))
    return cfg


def assign_paths(obj, path: str | None = None) -> None:
    """Record the path of `obj` (None: its class's `CONFIG_PATH`) and of every nested component below
    it ('<path>.<field>'), so their messages name the fields as typed on that recipe's command line."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    path = config_path(obj) if path is None else path
    set_config_path(obj, path)
    for f in dataclasses.fields(obj):
        assign_paths(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)


def replace_config(cfg, **changes):
    """`dataclasses.replace(cfg, **changes)` that keeps the recorded paths of `cfg` and of its nested
    components (a copy made at run start still names the fields the user typed)."""
    new = dataclasses.replace(cfg, **changes)
    if getattr(cfg, PATH_ATTR, None) is not None:
        assign_paths(new, config_path(cfg))
    return new
