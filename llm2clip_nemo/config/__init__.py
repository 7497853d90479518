"""Typed configs: dataclass schemas per component, YAML recipes in configs/, dotlist overrides.

    cfg = load_config(PretrainConfig, "pretrain_tiny", ["model.optim.lr=1e-3"])

Validation happens once, at load: unknown keys and wrong types are reported with the field
path, the bad value and the fix; component-level checks (`validate()` methods on the schema
dataclasses) run after the merge. `validate()` reads only the values (no files, no environment, no
field rewritten); checks that need the launch or the file system run where a recipe's run starts.
A recipe's `defaults:` list composes presets (`configs/teacher/*.yaml`, ...; see `loader.compose`),
and sizes derived from another part of the run are refused as keys (`loader.refuse_derived`).
"""
from .cli_args import CommandLine, UsageError, parse_command_line, usage_error, verb_parser
from .loader import CONFIG_DIR, ConfigError, load_config

__all__ = ["CONFIG_DIR", "CommandLine", "ConfigError", "UsageError", "load_config", "parse_command_line", "usage_error",
           "verb_parser"]
