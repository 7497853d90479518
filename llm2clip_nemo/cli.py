"""`llm2clip-nemo <verb> [args...]`: usage, then the verb's entry point (the table: `verbs.VERBS`)."""
from __future__ import annotations

import sys

from .config.cli_args import usage_error
from .verbs import VERBS, run


def usage() -> str:
    lines = ["usage: llm2clip-nemo VERB [SUBCOMMAND] [--config-name NAME] [--config-path DIR] [key=value ...] "
             "[--flag [VALUE] ...] [-h | --help]", "", "verbs:"]
    lines += [f"  {v:<20} {doc}" for v, (_, doc) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        return usage_error("llm2clip-nemo", f"unknown verb {verb!r}; choose one of {', '.join(VERBS)}")
    return run(verb, rest)


if __name__ == "__main__":
    sys.exit(main())
