"""Every shipped YAML recipe loads and validates against its typed schema; presets compose; sizes
that follow from another part of the run cannot be typed; `validate()` is pure."""
from __future__ import annotations

import builtins
import copy
import dataclasses
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llm2clip_nemo.config import CONFIG_DIR, ConfigError, load_config
from llm2clip_nemo.config.loader import available_configs, available_presets, compose, run_validators

RECIPES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
TRAIN_RECIPES = [n for n in RECIPES if n.startswith(("pretrain_", "finetune_"))]


def schema_for(name: str):
    if name.startswith(("pretrain_", "finetune_")):
        from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

        return TrainCLIPConfig
    if name.startswith("extract_"):
        from llm2clip_nemo.recipes.extract import ExtractConfig

        return ExtractConfig
    if name.startswith("caption_contrastive_"):
        from llm2clip_nemo.recipes.caption_contrastive import CaptionContrastiveConfig

        return CaptionContrastiveConfig
    raise AssertionError(f"configs/{name}.yaml matches no recipe schema")


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_loads_and_validates(name):
    cfg = load_config(schema_for(name), name)  # every validate() of the tree runs
    assert dataclasses.is_dataclass(cfg) and type(cfg) is schema_for(name)


@pytest.mark.parametrize("name", RECIPES)
def test_validate_is_pure(name, monkeypatch):
    """validate() neither changes a field nor opens, stats or lists a file, nor reads the environment."""
    cfg = load_config(schema_for(name), name, validate=False)
    before = copy.deepcopy(cfg)
    run_validators(copy.deepcopy(cfg))  # imports whatever the validators import, before the guards

    def refuse(*a, **k):
        raise AssertionError(f"validate() touched the file system: {a[:1]}")

    class NoEnviron(dict):
        def __getitem__(self, key):
            raise AssertionError(f"validate() read the environment: {key}")

        def get(self, key, default=None):
            return self[key]

        __contains__ = __getitem__

    for target, attr in ((builtins, "open"), (os, "stat"), (os, "listdir"), (os, "scandir"), (Path, "exists"),
                         (Path, "is_file"), (Path, "is_dir"), (Path, "stat"), (Path, "glob"), (Path, "iterdir")):
        monkeypatch.setattr(target, attr, refuse)
    monkeypatch.setattr(os, "environ", NoEnviron())
    run_validators(cfg)
    monkeypatch.undo()
    assert cfg == before


def test_large_recipe_is_the_headline_job():
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    cfg = load_config(TrainCLIPConfig, "pretrain_large")
    assert cfg.model.global_batch_size == 32768 and cfg.model.vision.fp8 is True
    assert cfg.model.teacher.tensor_parallel == 8 and cfg.model.vision.patch_size == 14
    assert "laion2b" in cfg.model.train_ds.urls and "recap" in cfg.model.train_ds.urls


# ---- composition -------------------------------------------------------------------------------

def test_recipes_share_one_teacher_block():
    """The teacher is written once per preset: stage 2 and extraction read the same values."""
    from llm2clip_nemo.recipes.extract import ExtractConfig
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    for extract, trains, batch in (("extract_tiny", ("pretrain_tiny", "finetune_tiny"), 32),
                                   ("extract_llama3_8b", ("pretrain_large", "finetune_large"), 512)):
        ext = load_config(ExtractConfig, extract).teacher
        for name in trains:
            assert dataclasses.replace(load_config(TrainCLIPConfig, name).model.teacher, batch_size=batch,
                                       max_tokens=ext.max_tokens) == ext, name
    tiny = load_config(TrainCLIPConfig, "pretrain_tiny").model.teacher
    assert (tiny.path, tiny.tensor_parallel, tiny.pooling, tiny.bidirectional, tiny.max_length) == (
        "embedded", 1, "mean", False, 32)
    assert "teacher/smollm2_tiny" in available_presets() and "teacher/smollm2_tiny" not in available_configs()


def test_defaults_merge_in_order_then_own_keys_then_overrides(tmp_path):
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "a.yaml").write_text("path: embedded\nbatch_size: 8\nmax_tokens: 100\n")
    (tmp_path / "teacher" / "b.yaml").write_text("defaults: [teacher/a]\nbatch_size: 16\n")
    (tmp_path / "run.yaml").write_text("defaults: [teacher/b@model.teacher, vision/tiny@model.vision]\n"
                                       "model: {teacher: {max_tokens: 200}}\n")
    cfg = load_config(TrainCLIPConfig, "run", ["model.teacher.dtype=fp32"], config_dir=tmp_path)
    t = cfg.model.teacher
    assert (t.path, t.batch_size, t.max_tokens, t.dtype) == ("embedded", 16, 200, "fp32")
    assert cfg.model.vision.embed_dim == 128  # vision/tiny from the shipped configs/ (not in tmp_path)
    assert OmegaConf.to_container(compose(tmp_path / "teacher" / "b.yaml", [tmp_path])) == {
        "path": "embedded", "batch_size": 16, "max_tokens": 100}


def test_defaults_errors_name_the_file_and_the_fix(tmp_path):
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    (tmp_path / "bad.yaml").write_text("defaults: [teacher/nope@model.teacher]\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainCLIPConfig, "bad", config_dir=tmp_path)
    here = tmp_path.resolve()
    assert str(e.value) == (f"{here / 'bad.yaml'}: defaults entry 'teacher/nope' is not a preset in {here}, "
                            f"{CONFIG_DIR}; available: {', '.join(available_presets())}")
    (tmp_path / "x.yaml").write_text("defaults: [y]\n")
    (tmp_path / "y.yaml").write_text("defaults: [x]\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainCLIPConfig, "x", config_dir=tmp_path)
    assert str(e.value) == "defaults cycle: x.yaml -> y.yaml -> x.yaml; remove one of the entries."
    (tmp_path / "m.yaml").write_text("defaults: {teacher: tiny}\n")
    with pytest.raises(ConfigError, match=r"m.yaml: defaults must be a list of preset names such as "
                                          r"\[teacher/tiny@model.teacher\], got \{'teacher': 'tiny'\}$"):
        load_config(TrainCLIPConfig, "m", config_dir=tmp_path)


# ---- sizes said once ---------------------------------------------------------------------------

DERIVED_MESSAGES = {
    "model.adapter.input_dim": "model.adapter.input_dim is no longer set in configs: it is the teacher's hidden size, "
                               "read from the teacher when the model is built. Remove model.adapter.input_dim from "
                               "the YAML or the overrides.",
    "model.adapter.joint_dim": "model.adapter.joint_dim is no longer set in configs: it is model.vision.embed_dim (both "
                               "towers project into the same space). Remove model.adapter.joint_dim from the YAML or "
                               "the overrides.",
}


@pytest.mark.parametrize("name", TRAIN_RECIPES)
@pytest.mark.parametrize("key", sorted(DERIVED_MESSAGES))
def test_a_recipe_typing_an_adapter_size_is_refused(name, key, tmp_path):
    """A copy of the recipe that types a mismatched size (or, in an override, even the right one) is refused."""
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    raw = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    OmegaConf.update(raw, key, 7, force_add=True)  # no teacher has hidden size 7, no recipe joint size 7
    (tmp_path / f"{name}.yaml").write_text(OmegaConf.to_yaml(raw))
    with pytest.raises(ConfigError) as e:
        load_config(TrainCLIPConfig, name, config_dir=tmp_path)
    assert str(e.value) == DERIVED_MESSAGES[key]
    right = {"model.adapter.joint_dim": load_config(TrainCLIPConfig, name).model.vision.embed_dim,
             "model.adapter.input_dim": 576}[key]
    with pytest.raises(ConfigError) as e:
        load_config(TrainCLIPConfig, name, [f"{key}={right}"])
    assert str(e.value) == DERIVED_MESSAGES[key]


def test_run_fields_are_not_config_fields():
    from llm2clip_nemo.data.config import StreamConfig

    for key, source in (("teacher_fingerprint", "the configured teacher's, computed when the model builds its stream"),
                        ("teacher_dim", "the teacher's hidden size, read when the model is built")):
        with pytest.raises(ConfigError) as e:
            load_config(StreamConfig, None, [f"{key}=1"])
        assert str(e.value) == f"{key} is no longer set in configs: it is {source}. Remove {key} from the YAML or the overrides."
    assert {f.name for f in dataclasses.fields(StreamConfig)}.isdisjoint(StreamConfig.DERIVED)


def test_the_adapter_takes_its_sizes_from_the_teacher_and_the_vision_tower(tmp_path):
    from llm_fixtures import write_tiny_llama

    from llm2clip_nemo.models.llm2clip import LLM2CLIPNetwork
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig
    from llm2clip_nemo.runtime import init_parallel
    from llm2clip_nemo.text.config import TeacherConfig, teacher_hidden_size

    teacher = write_tiny_llama(tmp_path / "t", hidden=48, heads=4, kv_heads=2)
    assert teacher_hidden_size(TeacherConfig(path=str(teacher))) == 48
    model = load_config(TrainCLIPConfig, "pretrain_tiny", ["model.vision.embed_dim=40"]).model
    net = LLM2CLIPNetwork(model, init_parallel(1), teacher_hidden_size(TeacherConfig(path=str(teacher))))
    assert (net.adapter.input_dim, net.adapter.joint_dim) == (48, 40)
    assert tuple(net.adapter.proj.weight.shape) == (40, 48) and net.vision.cfg.embed_dim == 40


# ---- checks of the launch and the files: where the run starts, exit code 2 ---------------------

def test_missing_teacher_is_refused_where_the_run_starts_exit_2(tmp_path, capsys):
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, main

    missing = tmp_path / "no-teacher"
    cfg = load_config(TrainCLIPConfig, "pretrain_tiny", [f"model.teacher.path={missing}"])  # loads: validate is pure
    assert cfg.model.teacher.path == str(missing)
    assert main(["--config-name", "pretrain_tiny", f"model.teacher.path={missing}",
                 f"exp_manager.exp_dir={tmp_path / 'runs'}"], mode="pretrain") == 2
    assert capsys.readouterr().err == (
        f"llm2clip-nemo pretrain: config error: model.teacher.path='{missing}' does not exist: point it at a Megatron "
        "teacher dir (`llm2clip-nemo convert import-llm`), a HF model dir, or use 'embedded'.\n")
    assert not (tmp_path / "runs").exists()


def test_teacher_tp_must_divide_the_ranks_where_the_run_starts():
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig, prepare_run
    from llm2clip_nemo.runtime import LayoutError

    cfg = load_config(TrainCLIPConfig, "pretrain_tiny", ["model.teacher.tensor_parallel=2", "trainer.devices=3"])
    with pytest.raises(LayoutError) as e:  # the layout's one TP rule (runtime.layout.check_tp)
        prepare_run(cfg)
    assert str(e.value) == ("model.teacher.tensor_parallel=2 does not divide the world size 3: set it to one of "
                            "[1, 3] or launch a multiple of 2 processes.")


def test_caption_data_paths_are_checked_where_stage_1_starts(tmp_path, capsys):
    from llm2clip_nemo.recipes.caption_contrastive import load, main

    missing = tmp_path / "none"
    assert load("caption_contrastive_tiny", [f"model.data.train_path={missing}"]).model.data.train_path == str(missing)
    assert main(["--config-name", "caption_contrastive_tiny", f"model.data.train_path={missing}",
                 f"exp_manager.exp_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llm2clip-nemo caption-contrastive: config error: model.data.train_path='{missing}' does not exist or holds no shards (")
    assert err.endswith("): build the dataset first (e.g. `llm2clip-nemo data demo`) or set "
                        "model.data.train_path=demo for the embedded demo.\n") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_component_value_error_is_a_config_error_exit_2(capsys):
    """ViTConfig, TeacherConfig and AdapterConfig raise ValueError; the loader hands it on as ConfigError,
    so the verb prints one line and exits 2 instead of a traceback."""
    from llm2clip_nemo.recipes.train_clip import main

    assert main(["--config-name", "pretrain_tiny", "model.vision.width=32"], mode="pretrain") == 2
    assert capsys.readouterr().err == (
        "llm2clip-nemo pretrain: config error: model.vision.width=32 is not divisible by model.vision.num_heads=3: set "
        "model.vision.width to a multiple of 3 (e.g. 33) or choose a model.vision.num_heads that divides 32.\n")


def test_a_config_stored_before_the_sizes_were_derived_still_loads():
    """Checkpoints written before this change store adapter.input_dim/joint_dim and the stream's run
    fields; the loader drops them (the adapter's trained size is then read from its weights)."""
    from llm2clip_nemo.models.llm2clip_config import LLM2CLIPConfig
    from llm2clip_nemo.models.loading import prepare_config
    from llm2clip_nemo.models.nemo_base import from_dictconfig, to_dictconfig
    from llm2clip_nemo.recipes.train_clip import TrainCLIPConfig

    model = load_config(TrainCLIPConfig, "pretrain_tiny").model
    stored = OmegaConf.to_container(to_dictconfig(model))
    stored["adapter"].update(input_dim=576, joint_dim=128)
    stored["train_ds"].update(output="embeddings", teacher_fingerprint="abc", teacher_dim=576)
    assert from_dictconfig(LLM2CLIPConfig, prepare_config(stored)) == model


def test_a_typed_adapter_size_exits_2_in_one_line(capsys):
    from llm2clip_nemo.recipes.train_clip import main

    assert main(["--config-name", "pretrain_tiny", "model.adapter.joint_dim=128"], mode="pretrain") == 2
    assert capsys.readouterr().err == f"llm2clip-nemo pretrain: config error: {DERIVED_MESSAGES['model.adapter.joint_dim']}\n"
