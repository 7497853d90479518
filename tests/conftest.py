"""Shared pytest fixtures. Helpers live in llm_fixtures.py / dist_utils.py."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a HF safetensors directory (made once from the packaged GGUF)."""
    from llm2clip_nemo.text.hf_io import embedded_llm_dir

    return embedded_llm_dir()


@pytest.fixture(scope="session")
def smollm2_tp3(smollm2_dir, tmp_path_factory):
    """SmolLM2 converted to a Megatron teacher directory split for TP=3 (by `convert import-llm`)."""
    from llm2clip_nemo.convert.llm import import_llm

    return import_llm(smollm2_dir, tmp_path_factory.mktemp("smollm2") / "tp3", tp=3)
