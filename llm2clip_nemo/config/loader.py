"""Load a YAML recipe into a typed dataclass schema, apply dotlist overrides, validate."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .paths import assign_paths

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A configuration problem: the message names the field, the value and the fix."""


def available_configs(config_dir: Path = CONFIG_DIR, prefix: str = "") -> list[str]:
    """Recipe names in `config_dir` (its top-level *.yaml; presets live in sub-directories)."""
    return sorted(p.stem for p in config_dir.glob(f"{prefix}*.yaml"))


def available_presets(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Preset names (`teacher/tiny`, ...): the *.yaml files in the sub-directories of `config_dir`."""
    return sorted(str(p.relative_to(config_dir).with_suffix("")) for p in config_dir.glob("*/**/*.yaml"))


def _find_preset(name: str, dirs: Sequence[Path], where: Path) -> Path:
    for d in dirs:
        f = d / f"{name}.yaml"
        if f.is_file():
            return f
    known = sorted({p for d in dirs for p in available_presets(d)})
    raise ConfigError(f"{where}: defaults entry {name!r} is not a preset in {', '.join(map(str, dirs))}; "
                      f"available: {', '.join(known) or 'none'}")


def _nest(key: str, node):
    for part in reversed(key.split(".")):
        node = {part: node}
    return OmegaConf.create(node)


def compose(f: Path, dirs: Sequence[Path] = (CONFIG_DIR,), chain: tuple[Path, ...] = ()):
    """The YAML file `f` with its `defaults:` presets merged in before its own keys.

    `defaults:` is a list of `PRESET` or `PRESET@KEY` entries: PRESET names a file under a config
    directory without `.yaml` (`teacher/tiny` = `configs/teacher/tiny.yaml`), KEY the dotted place it
    is merged at (`model.teacher`; none = the top level). Entries merge in order, then the file's own
    keys win; presets may have defaults of their own. Looked up in `dirs` in order (the recipe's
    config directory, then the shipped configs/).
    Raises ConfigError naming the file for an unknown preset, a malformed entry or a cycle."""
    f = f.resolve()
    if f in chain:
        raise ConfigError(f"defaults cycle: {' -> '.join(p.name for p in (*chain, f))}; remove one of the entries.")
    raw = OmegaConf.load(f)
    entries = raw.pop("defaults", None) if isinstance(raw, DictConfig) else None
    if entries is None:
        return raw
    if not isinstance(entries, ListConfig) or not all(isinstance(e, str) for e in entries):
        shown = OmegaConf.to_container(entries) if isinstance(entries, DictConfig | ListConfig) else repr(entries)
        raise ConfigError(f"{f}: defaults must be a list of preset names such as [teacher/tiny@model.teacher], "
                          f"got {shown}")
    layers = []
    for e in entries:
        name, _, key = e.partition("@")
        layer = compose(_find_preset(name, dirs, f), dirs, (*chain, f))
        layers.append(_nest(key, layer) if key else layer)
    return OmegaConf.merge(*layers, raw)


def load_config(schema: type[T], config_name: str | None = None, overrides: Sequence[str] = (),
                config_dir: Path | None = None, validate: bool = True) -> T:
    """Merge schema defaults <- YAML recipe (its `defaults:` presets first, see `compose`) <- overrides,
    then return the validated dataclass.

    validate=False checks names and types only (no `validate()` methods): for readers such as the
    capacity planner. `validate()` methods are pure (no file system, no environment): checks of
    paths and of the launch are made where a run starts."""
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    base = OmegaConf.structured(schema)
    layers = []
    if config_name:
        f = config_dir / (config_name if config_name.endswith(".yaml") else f"{config_name}.yaml")
        if not f.is_file():
            raise ConfigError(
                f"config {config_name!r} not found in {config_dir}; available: "
                f"{', '.join(available_configs(config_dir)) or 'none'}"
            )
        layers.append(compose(f, list(dict.fromkeys([config_dir.resolve(), CONFIG_DIR]))))
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value (e.g. model.optim.lr=1e-4)")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    for layer in layers:
        refuse_derived(schema, OmegaConf.to_container(layer, resolve=False))
    try:
        merged = OmegaConf.merge(base, *layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e)) from None
    if validate:
        run_validators(obj)
    else:
        assign_paths(obj)
    return obj


def refuse_derived(schema: type, layer: dict, path: str = "") -> None:
    """ConfigError for a key of `layer` (a YAML or overrides as a plain dict) that names a value
    derived from another part of the run. A schema lists such former fields in a `DERIVED` class
    attribute, {name: where the value comes from}; setting one, even to the right value, is refused,
    so no two places can disagree."""
    if not dataclasses.is_dataclass(schema) or not isinstance(layer, dict):
        return
    derived = getattr(schema, "DERIVED", {})
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in layer.keys():
        if key in derived:
            raise ConfigError(f"{path}{key} is no longer set in configs: it is {derived[key]}. "
                              f"Remove {path}{key} from the YAML or the overrides.")
        f = fields.get(key)
        if f is not None and f.default_factory is not dataclasses.MISSING:
            refuse_derived(type(f.default_factory()), layer[key], f"{path}{key}.")


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return f"unknown config field {key!r}: {msg}. Check the spelling against the schema."
    return f"bad value for config field {key!r}: {msg}"


def run_validators(obj, path: str | None = None) -> None:
    """Record each component's path (`paths.assign_paths`; `path` None: the root's class
    `CONFIG_PATH`, '' for a recipe schema), then call `validate()` on every dataclass in the tree,
    innermost first, so messages name fields by the path the user types (`paths.field_path`).
    A ValueError a component raises comes out as ConfigError with its message (every verb maps that
    to exit code 2)."""
    assign_paths(obj, path)
    _validate_tree(obj)


def _validate_tree(obj) -> None:
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _validate_tree(getattr(obj, f.name))
    v = getattr(obj, "validate", None)
    if callable(v):
        try:
            v()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None


def to_yaml(obj) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))
