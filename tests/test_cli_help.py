"""Every verb answers --help with its usage (and, for config-driven verbs, its config's fields),
exit status 0, nothing on stderr, and no NeMo/megatron/Lightning/transformers import before parsing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm2clip_nemo.cli import VERBS
from llm2clip_nemo.config.help import config_fields, field_docs, wants_help

# All verbs in one fresh interpreter (one start-up instead of eleven): per verb the exit status and
# what it printed; at the end the heavy packages that got imported. The process's own stderr must stay
# empty too (third-party warnings written straight to the file descriptor would land there).
PROBE = """
import contextlib, io, json, sys
from llm2clip_nemo.cli import VERBS, main
out = {}
for verb in VERBS:
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = main([verb, "--help"])
        except SystemExit as e:  # argparse verbs exit after printing help
            rc = e.code or 0
    out[verb] = [rc, so.getvalue(), se.getvalue()]
heavy = sorted(m for m in ("nemo", "megatron", "lightning", "transformers") if m in sys.modules)
print(json.dumps({"verbs": out, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def helps():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr[-2000:]
    return json.loads(r.stdout)


def test_help_imports_no_heavy_package(helps):
    assert helps["heavy"] == []


# config-driven verbs: a field of each part of the config, with its docstring text
CONFIG_FIELDS = {
    "pretrain": ["model.teacher.tensor_parallel: int = 1", "model.vision.image_size", "trainer.max_steps",
                 "exp_manager.resume_if_exists", "TP size t: the teacher is split over groups of t consecutive ranks",
                 "configs (configs/*.yaml): pretrain_base, pretrain_large, pretrain_tiny"],
    "finetune": ["model.init_from: str = ''", "configs (configs/*.yaml): finetune_large, finetune_tiny"],
    "caption-contrastive": ["model.data.global_batch_size: int = 512", "model.optim.lr", "model.lora",
                            "Triples per optimizer step over all data-parallel ranks"],
    "extract": ["teacher.path: str = 'embedded'", "configs (configs/*.yaml): extract_llama3_8b, extract_tiny"],
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_answers_help_quietly(helps, verb):
    rc, out, err = helps["verbs"][verb]
    assert (rc, err) == (0, "")
    assert "Warning" not in out and out.startswith(f"usage: llm2clip-nemo {verb}"), out[:300]
    for text in CONFIG_FIELDS.get(verb, []):
        assert text in out, text


def test_field_docs_come_from_attribute_docstrings_including_bases():
    from llm2clip_nemo.models.caption_contrastive_config import CaptionContrastiveModelConfig
    from llm2clip_nemo.models.caption_encoder import EncoderConfig
    from llm2clip_nemo.recipes.extract import ExtractConfig

    docs = field_docs(CaptionContrastiveModelConfig)  # `pooling` is a field of its base, EncoderConfig
    assert docs["pooling"] == field_docs(EncoderConfig)["pooling"] and docs["pooling"].startswith("mean")
    keys = [k for k, *_ in config_fields(CaptionContrastiveModelConfig)]
    assert "optim.lr" in keys and "data.global_batch_size" in keys and "optim" not in keys
    rows = {k: (t, v, d) for k, t, v, d in config_fields(ExtractConfig)}
    assert rows["teacher.path"][1] == "embedded" and rows["teacher.path"][2].startswith("Megatron teacher dir")
    assert wants_help(["--config-name", "x", "-h"]) and not wants_help(["--", "--help"])
