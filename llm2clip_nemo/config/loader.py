"""Load a YAML recipe into a typed dataclass schema, apply dotlist overrides, validate."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A configuration problem: the message names the field, the value and the fix."""


def available_configs(config_dir: Path = CONFIG_DIR, prefix: str = "") -> list[str]:
    return sorted(p.stem for p in config_dir.glob(f"{prefix}*.yaml"))


def load_config(schema: type[T], config_name: str | None = None, overrides: Sequence[str] = (),
                config_dir: Path | None = None, validate: bool = True) -> T:
    """Merge schema defaults <- YAML recipe <- overrides, then return the validated dataclass.

    validate=False checks names and types only (no `validate()` methods): for readers such as the
    capacity planner that must accept a recipe whose paths exist only on the cluster."""
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
        layers.append(OmegaConf.load(f))
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value (e.g. model.optim.lr=1e-4)")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(base, *layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e)) from None
    if validate:
        run_validators(obj)
    return obj


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return f"unknown config field {key!r}: {msg}. Check the spelling against the schema."
    return f"bad value for config field {key!r}: {msg}"


def run_validators(obj, path: str = "") -> None:
    """Call `validate()` on every dataclass in the tree, innermost first."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        run_validators(getattr(obj, f.name), f"{path}{f.name}.")
    v = getattr(obj, "validate", None)
    if callable(v):
        v()


def to_yaml(obj) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))
