"""Shared pytest fixtures. Helpers live in llm_fixtures.py / dist_utils.py."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a HF safetensors directory (made once from the packaged GGUF)."""
    from llm2clip_nemo.formats.hf_io import embedded_llm_dir

    return embedded_llm_dir()


@pytest.fixture(scope="session")
def smollm2_tp3(smollm2_dir, tmp_path_factory):
    """SmolLM2 converted to a Megatron teacher directory split for TP=3 (by `convert import-llm`)."""
    from llm2clip_nemo.convert.llm import import_llm

    return import_llm(smollm2_dir, tmp_path_factory.mktemp("smollm2") / "tp3", tp=3)


def _source(filename: str) -> str:
    """The package a warning came from: the first path part after site-packages, else 'llm2clip_nemo'/'tests'."""
    from pathlib import Path

    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    return "llm2clip_nemo" if "llm2clip_nemo" in parts else ("tests" if "tests" in parts else parts[-1])


def pytest_terminal_summary(terminalreporter):
    """pytest.ini's --disable-warnings hides pytest's per-warning list (thousands of repeated third-party
    lines that pytest.ini's filters miss when a library resets the warning filters at import). Here:
    one count per source package, and the full text of the warnings raised by our own code or tests."""
    from collections import Counter

    reports = terminalreporter.stats.get("warnings", [])
    if not reports:
        return
    counts = Counter(_source(r.fslocation[0]) if isinstance(r.fslocation, tuple) else "?" for r in reports)
    terminalreporter.write_sep("=", f"warnings: {len(reports)} ("
                               + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + ")")
    for r in reports:
        if isinstance(r.fslocation, tuple) and _source(r.fslocation[0]) in ("llm2clip_nemo", "tests"):
            terminalreporter.write_line(f"{r.nodeid}: {r.message.strip().splitlines()[0]}")
