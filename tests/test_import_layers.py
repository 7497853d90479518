"""The package's layering (.importlinter at the repository root) holds: `lint-imports` exits 0; no module
imports a private (leading-underscore) name from another package of llm2clip_nemo."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in proc.stdout


def _package(module: str) -> str:
    """The top-level package of a dotted module name inside llm2clip_nemo ('llm2clip_nemo.text.teacher'
    -> 'llm2clip_nemo.text'; a top-level module such as 'llm2clip_nemo.cli' is its own package)."""
    return ".".join(module.split(".")[:2])


def private_cross_package_imports(root: Path) -> list[str]:
    """'module:line imports name from target' for every `from target import _name` in the package at
    `root` whose target lies in another top-level package (relative imports resolved)."""
    found = []
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package_parts = parts[:-1]  # the package a relative import starts from
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(root.name):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and _package(target) != _package(module):
                    found.append(f"{module}:{node.lineno} imports {alias.name} from {target}")
    return found


def test_private_cross_package_imports_are_found(tmp_path):
    pkg = tmp_path / "llm2clip_nemo"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "a" / "x.py").write_text("from ..b.y import _hidden, public\nfrom .z import _same_package\n")
    (pkg / "b" / "y.py").write_text("from llm2clip_nemo.a.x import _other\nfrom . import y as _alias_ok\n")
    assert private_cross_package_imports(pkg) == [
        "llm2clip_nemo.a.x:1 imports _hidden from llm2clip_nemo.b.y",
        "llm2clip_nemo.b.y:1 imports _other from llm2clip_nemo.a.x",
    ]


def test_no_private_names_imported_across_packages():
    assert private_cross_package_imports(ROOT / "llm2clip_nemo") == []
