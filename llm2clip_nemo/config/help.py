"""`--help` for the config-driven verbs: usage plus every field of the recipe's typed config.

The text of each field comes from the attribute docstring under it in the dataclass source (the
convention every schema here follows), read with `ast`: nothing is duplicated by hand, and only the
schema's own modules are imported (no NeMo, megatron or transformers).
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Sequence
from functools import cache

from .loader import available_configs

HELP_FLAGS = ("-h", "--help")


def wants_help(argv: Sequence[str]) -> bool:
    """True when `argv` asks for help (`-h` or `--help` anywhere before a `--`)."""
    head = list(argv)[: list(argv).index("--")] if "--" in argv else list(argv)
    return any(a in HELP_FLAGS for a in head)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: attribute docstring} of a dataclass and its dataclass bases (the class's own win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_fields(schema, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """(dotted key, type, default, doc) of every leaf field of `schema` (a dataclass, or an instance whose
    values are the defaults: a nested field's default_factory may set its own), nested ones flattened."""
    rows = []
    docs = field_docs(schema if isinstance(schema, type) else type(schema))
    for f in dataclasses.fields(schema):
        value = _default(f) if isinstance(schema, type) else getattr(schema, f.name)
        if dataclasses.is_dataclass(value):
            rows += config_fields(value, f"{prefix}{f.name}.")
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f"{prefix}{f.name}", type_name, value, docs.get(f.name, "")))
    return rows


def recipe_help(prog: str, doc: str | None, schema: type, config_prefix: str) -> str:
    """Usage, the recipe module's summary, the shipped configs and every config field with its doc."""
    summary = (doc or "").strip().split("\n\n")
    lines = [f"usage: {prog} [--config-name NAME] [--config-path DIR] [key=value ...]", ""]
    if len(summary) > 1:
        lines += [summary[1].strip(), ""]
    lines += [f"configs (configs/*.yaml): {', '.join(available_configs(prefix=config_prefix)) or 'none'}", "",
              "config fields (key: type = default  what it does); override any with key=value:"]
    for key, type_name, value, text in config_fields(schema):
        shown = "(required)" if value is dataclasses.MISSING else repr(value)
        lines.append(f"  {key}: {type_name} = {shown}" + (f"\n      {text}" if text else ""))
    return "\n".join(lines)
