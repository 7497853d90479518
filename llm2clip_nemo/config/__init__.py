"""Typed configs: dataclass schemas per component, YAML recipes in configs/, dotlist overrides.

    cfg = load_config(PretrainConfig, "pretrain_tiny", ["model.optim.lr=1e-3"])

Validation happens once, at load: unknown keys and wrong types are reported with the field
path, the bad value and the fix; component-level checks (`validate()` methods on the schema
dataclasses) run after the merge.
"""
from .cli_args import CommandLine, UsageError, parse_command_line, usage_error, verb_parser
from .loader import CONFIG_DIR, ConfigError, load_config

__all__ = ["CONFIG_DIR", "CommandLine", "ConfigError", "UsageError", "load_config", "parse_command_line", "usage_error",
           "verb_parser"]
