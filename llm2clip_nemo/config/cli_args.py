"""The one command-line grammar of every `llm2clip-nemo` verb, defined here once:

    llm2clip-nemo VERB [SUBCOMMAND] [--config-name NAME] [--config-path DIR] [key=value ...]
                       [--flag [VALUE] ...] [-h | --help]

- `--config-name NAME` (or `--config-name=NAME`): the recipe configs/NAME.yaml; `--config-path DIR`
  reads it from DIR instead; `key=value`: a dotted override of a typed config field
  (`model.optim.lr=5e-4`). Config verbs: pretrain, finetune, caption-contrastive, extract, plan
  (`parse_command_line`).
- `--flag VALUE`: a verb's options, listed by its `--help` (evaluate, convert, data, launch, doctor,
  info, plan's `--json`), parsed by a `VerbParser`.
- `-h` / `--help` anywhere before a `--`: usage and every option or config field, exit status 0.
- A command line the verb cannot take (an unknown flag or subcommand, a flag without its value, a
  stray argument) is one line on stderr, exit status 2, no traceback:
  `llm2clip-nemo VERB: error: WHAT (see llm2clip-nemo VERB --help)`. Errors found after parsing
  (config, data, checkpoints) keep the `llm2clip-nemo VERB: ` prefix and exit 2 as well.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROG = "llm2clip-nemo"
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")


class UsageError(ValueError):
    """A command line the verb cannot take; the message says what and how to fix it."""


def usage_error(prog: str, message: str) -> int:
    """Print the grammar's one error line for `prog` (e.g. 'llm2clip-nemo pretrain'); return 2."""
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    return 2


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{option string: action} of `parser` and of its subcommands' parsers."""
    names = dict(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _options(sub)
    return names


def _unknown(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The `--flags` `parser` does not know and the `key=value` overrides it cannot take (a flag's own
    value, e.g. `--templates 'a photo of {}'`, is skipped)."""
    options, unknown, skip = _options(parser), [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("--"):
            action = options.get(a.split("=", 1)[0])
            if action is None:
                unknown.append(a)
            else:
                skip = "=" not in a and action.nargs != 0
        elif _OVERRIDE.match(a):
            unknown.append(a)
    return unknown


class VerbParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with the grammar's errors: one line, exit status 2.

    `parse_args` names an unknown `--flag` or a `key=value` (config verbs only) before anything else
    (argparse would first complain about a missing required argument); `parse_known_args` leaves unknown flags to the caller (launch hands
    them to the verb it runs). Subcommand parsers inherit the class, so their errors read
    'llm2clip-nemo convert export-hf: error: ...'."""

    def error(self, message: str):
        usage_error(self.prog, message)
        self.exit(2)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        unknown = _unknown(self, argv[: argv.index("--")] if "--" in argv else argv)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_args(argv, namespace)


def verb_parser(verb: str, **kwargs) -> VerbParser:
    """The `VerbParser` of `llm2clip-nemo VERB` (kwargs: `argparse.ArgumentParser`'s, e.g. description)."""
    return VerbParser(prog=f"{PROG} {verb}", **kwargs)


@dataclass
class CommandLine:
    """A config verb's command line, split."""

    config_name: str | None = None
    """`--config-name`: a recipe in configs/ (or `config_path`), None for the schema's defaults."""
    config_path: Path | None = None
    """`--config-path`: the folder to read `config_name` from, None for configs/."""
    overrides: list[str] = field(default_factory=list)
    """`key=value` dotlist overrides, in command-line order."""
    flags: argparse.Namespace | None = None
    """The verb's own flags, when it has a `VerbParser`."""


def split_config_args(argv: Sequence[str]) -> tuple[str | None, Path | None, list[str], list[str]]:
    """Split `[--config-name N] [--config-path DIR] [key=value ...] [other ...]` into (config_name,
    config_path, overrides, others). Accepts `--config-name N` and Hydra's `--config-name=N`; raises
    `UsageError` when one of them has no value."""
    name, path, overrides, rest = None, None, [], []
    it = iter(argv)
    for a in it:
        if a.split("=", 1)[0] in ("--config-name", "--config-path"):
            key, _, val = a.partition("=")
            if not val:
                val = next(it, None)
                if val is None:
                    raise UsageError(f"{key} needs a value, e.g. {key} "
                                     f"{'pretrain_tiny' if key == '--config-name' else 'configs/'}")
            if key == "--config-name":
                name = val
            else:
                path = Path(val)
        elif "=" in a and not a.startswith("-"):
            overrides.append(a)
        else:
            rest.append(a)
    return name, path, overrides, rest


def parse_command_line(verb: str, argv: Sequence[str], flags: VerbParser | None = None) -> CommandLine:
    """A config verb's command line: the config name, path and overrides, then the verb's own flags
    (with `flags`) or nothing else. A command line it cannot take prints the grammar's one error line
    and exits with status 2 (SystemExit, as argparse does)."""
    prog = f"{PROG} {verb}"
    try:
        name, path, overrides, rest = split_config_args(argv)
    except UsageError as e:
        usage_error(prog, str(e))
        raise SystemExit(2) from None
    if flags is not None:
        return CommandLine(name, path, overrides, flags.parse_args(rest))
    if rest:
        usage_error(prog, f"unrecognized arguments: {' '.join(rest)}")
        raise SystemExit(2)
    return CommandLine(name, path, overrides)
