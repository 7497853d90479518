"""Messages name a config field by the path the user types on that verb's command line.

A component (StreamConfig, TransformConfig, ViTConfig, TeacherConfig, ...) sits at a different
place in each recipe; the loader records it (`config.paths`), so `pretrain ... model.train_ds.slots=0`
is answered with `model.train_ds.slots=0 ...`, not with a relative `data.slots` the verb would refuse
as an unknown key. Each case runs the real command line (`llm2clip_nemo.cli.main`) in-process:
one line on stderr, exit code 2.
"""
from __future__ import annotations

import pytest

from llm2clip_nemo.cli import main as cli


def _fails(capsys, argv: list[str]) -> str:
    assert cli(argv) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1, out.err
    return out.err


PRETRAIN = [
    ("model.train_ds.batch_size=0", "model.train_ds.batch_size=0 must be >= 1"),
    ("model.train_ds.slots=0", "model.train_ds.slots=0 must be >= 1 or null (the world size)"),
    ("model.train_ds.caption_sampling=few", "model.train_ds.caption_sampling='few': choose one (a field per sample "
                                            "per step) or all (every caption field as a positive)"),
    ("model.train_ds.transform.image_size=4", "model.train_ds.transform.image_size=4 is too small; use e.g. 224"),
    ("model.vision.embed_dim=0", "model.vision.embed_dim=0 must be >= 1."),
    ("model.teacher.tensor_parallel=0", "model.teacher.tensor_parallel=0 must be >= 1."),
    ("model.teacher.dtype=fp16", "model.teacher.dtype='fp16' must be auto, fp32 or bf16."),
    ("model.adapter.expansion=0", "model.adapter.expansion=0 must be >= 1."),
    ("model.ema.decay=1.0", "model.ema.decay=1.0 must be in (0, 1) and model.ema.warmup_steps=0 >= 0 (e.g. "
                            "decay=0.999, warmup_steps=1000)."),
    ("model.optim.betas=[0.9]", "model.optim.betas=[0.9]: give two values in [0, 1), e.g. [0.9, 0.98]."),
]


def test_pretrain_and_finetune_name_the_model_paths(capsys):
    for override, message in PRETRAIN:
        err = _fails(capsys, ["pretrain", "--config-name", "pretrain_tiny", override])
        assert err == f"llm2clip-nemo pretrain: config error: {message}\n", override
    err = _fails(capsys, ["finetune", "--config-name", "finetune_tiny", "model.train_ds.open_shards=0"])
    assert err == "llm2clip-nemo finetune: config error: model.train_ds.open_shards=0 must be >= 1\n"


def test_extract_names_its_top_level_sections(capsys):
    for override, message in [
        ("teacher.tensor_parallel=0", "teacher.tensor_parallel=0 must be >= 1."),
        ("data.storage_dtype=fp8", "data.storage_dtype='fp8' must be fp16, bf16 or int8."),
        ("plan.mfu=2.0", "plan.mfu=2.0 must be in (0, 1]."),
    ]:
        err = _fails(capsys, ["extract", "--config-name", "extract_tiny", override])
        assert err == f"llm2clip-nemo extract: config error: {message}\n", override


def test_caption_contrastive_names_the_model_paths(capsys):
    for override, message in [
        ("model.optim.betas=[2.0,0.9]", "model.optim.betas=[2.0, 0.9]: give two values in [0, 1), e.g. [0.9, 0.98]."),
        ("model.mntp.mask_prob=0", "model.mntp.steps=0 must be >= 0 and model.mntp.mask_prob=0.0 in (0, 1)."),
        ("model.data.hard_negatives=2", "model.data.global_batch_size=8 must be >= 1 and model.data.hard_negatives=2 "
                                        "0 or 1."),
        ("trainer.devices=3", "model.data.global_batch_size=8 is not divisible by the 3 data-parallel ranks: use a "
                              "multiple of 3, e.g. 6."),
    ]:
        err = _fails(capsys, ["caption-contrastive", "--config-name", "caption_contrastive_tiny", override])
        assert err == f"llm2clip-nemo caption-contrastive: config error: {message}\n", override
    from llm2clip_nemo.recipes.caption_contrastive import load

    data = load("caption_contrastive_tiny", ["model.data.short_fields=[]", "model.data.long_fields=[]"]).model.data
    with pytest.raises(ValueError) as e:  # the pairs reader's config is built from model.data where the run starts
        data.pair_config().validate()
    assert str(e.value) == ("pairs: set model.data.short_fields and/or model.data.long_fields, e.g. "
                            "short_fields=[txt] long_fields=[long]")


def test_evaluate_and_data_inspect_name_their_spec_argument(capsys):
    err = _fails(capsys, ["evaluate", "--model", "unused", "--data", "a/{0..1}.tar::"])
    assert err == ("llm2clip-nemo evaluate: error: --data='a/{0..1}.tar::' has an empty source; use e.g. "
                   "'dir/shard-{000000..000009}.tar::other/'\n")
    err = _fails(capsys, ["data", "inspect", "a/{0..1}.tar::"])
    assert err == ("llm2clip-nemo data inspect: urls='a/{0..1}.tar::' has an empty source; use e.g. "
                   "'dir/shard-{000000..000009}.tar::other/'\n")


def test_a_stream_error_at_run_start_names_the_recipe_path(tmp_path, capsys):
    """A DataSourceError raised by the stream (not by validate) names model.train_ds.<field> too."""
    shards = f"{tmp_path}/shard-{{000000..000001}}.tar"
    assert cli(["pretrain", "--config-name", "pretrain_tiny", f"model.train_ds.urls={shards}",
                f"exp_manager.exp_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.splitlines(keepends=True)[-1]  # after the trainer's start-up log lines
    assert err == (f"llm2clip-nemo pretrain: data error: shard '{tmp_path}/shard-000000.tar' (from source "
                   f"'{shards}') does not exist or is not readable; check the path and brace range in "
                   "model.train_ds.urls, or list what is there with `llm2clip-nemo data inspect`\n")


def test_a_component_built_in_python_keeps_its_relative_name():
    from llm2clip_nemo.config.loader import ConfigError, run_validators
    from llm2clip_nemo.config.paths import field_path, replace_config
    from llm2clip_nemo.data.config import StreamConfig
    from llm2clip_nemo.models.llm2clip_config import LLM2CLIPConfig

    with pytest.raises(ConfigError, match=r"^data.slots=0 must be >= 1 or null \(the world size\)$"):
        StreamConfig(slots=0).validate()
    model = LLM2CLIPConfig()
    run_validators(model)  # as `nemo_base.from_dictconfig` does for a restored model: the root is `model`
    assert field_path(model.train_ds.transform, "scale") == "model.train_ds.transform.scale"
    assert field_path(replace_config(model.train_ds, slots=4).transform, "mean") == "model.train_ds.transform.mean"
    assert field_path(StreamConfig().transform, "mean") == "transform.mean"


def test_stream_errors_name_the_recorded_path(tmp_path):
    """The stream's run-time refusals (energon constructs, mixing values) name the recipe's path."""
    import yaml

    from llm2clip_nemo.config.loader import run_validators
    from llm2clip_nemo.data.errors import DataSourceError
    from llm2clip_nemo.data.stream import ImageTextStream
    from llm2clip_nemo.models.llm2clip_config import LLM2CLIPConfig

    meta = tmp_path / "m.yaml"
    meta.write_text(yaml.safe_dump({"__module__": "megatron.energon", "__class__": "MetadatasetV2",
                                    "splits": {"train": {"path": "./a", "shuffle_over_epochs_multiplier": 2}}}))
    model = LLM2CLIPConfig()
    run_validators(model)
    model.train_ds.urls = str(meta)
    with pytest.raises(DataSourceError) as e:
        ImageTextStream(model.train_ds)
    assert str(e.value) == (f"{meta}: splits.train: 'shuffle_over_epochs_multiplier' is not supported by llm2clip_nemo; "
                            "remove it (shard order is model.train_ds.shard_shuffle and model.train_ds.seed)")
    model.train_ds.urls, model.train_ds.weights, model.train_ds.check_paths = "a.tar::b.tar", "1::x", False
    with pytest.raises(DataSourceError) as e:
        ImageTextStream(model.train_ds)
    assert str(e.value) == "model.train_ds.weights='1::x' is not numbers separated by '::'"
