"""Every verb answers --help with its usage (and, for config-driven verbs, its config's fields),
exit status 0, nothing on stderr, and no NeMo/megatron/Lightning/transformers import before parsing;
every verb refuses a command line it cannot take with the one error line of `config.cli_args`, exit 2."""
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
bad = {}
for argv in BAD:
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    bad[" ".join(argv)] = [rc, so.getvalue(), se.getvalue()]
print(json.dumps({"verbs": out, "heavy": heavy, "bad": bad}))
"""


# command lines no verb can take: an unknown flag for each verb, and the grammar's other mistakes
BAD = [[verb, "--no-such-flag"] for verb in VERBS] + [
    ["evaluate", "lr=0.1"], ["pretrain", "--config-name"], ["extract", "stray"], ["plan", "--config-path"],
    ["convert", "export-hf", "--no-such-flag"], ["no-such-verb"]]


@pytest.fixture(scope="module")
def helps():
    probe = PROBE.replace("from llm2clip_nemo.cli import VERBS, main", f"from llm2clip_nemo.cli import VERBS, main\nBAD = {BAD!r}")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
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


def _grammar_error(prog: str, what: str) -> list:
    return [2, "", f"{prog}: error: {what} (see {prog} --help)\n"]


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_refuses_an_unknown_flag_in_one_line_exit_2(helps, verb):
    # launch hands unknown flags to the verb it runs: here there is no verb, and that is the error
    what = ("the following arguments are required: VERB" if verb == "launch"
            else "unrecognized arguments: --no-such-flag")
    assert helps["bad"][f"{verb} --no-such-flag"] == _grammar_error(f"llm2clip-nemo {verb}", what)


@pytest.mark.parametrize("argv, prog, what", [
    ("evaluate lr=0.1", "llm2clip-nemo evaluate", "unrecognized arguments: lr=0.1"),
    ("pretrain --config-name", "llm2clip-nemo pretrain", "--config-name needs a value, e.g. --config-name pretrain_tiny"),
    ("extract stray", "llm2clip-nemo extract", "unrecognized arguments: stray"),
    ("plan --config-path", "llm2clip-nemo plan", "--config-path needs a value, e.g. --config-path configs/"),
    ("convert export-hf --no-such-flag", "llm2clip-nemo convert", "unrecognized arguments: --no-such-flag"),
    ("no-such-verb", "llm2clip-nemo", "unknown verb 'no-such-verb'; choose one of " + ", ".join(VERBS)),
])
def test_the_grammar_mistakes_share_the_error_line(helps, argv, prog, what):
    assert helps["bad"][argv] == _grammar_error(prog, what)
