"""Every shipped YAML recipe parses against its typed schema (unknown keys and bad types fail)."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from llm2clip_nemo.config import CONFIG_DIR


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


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_config_matches_schema(name):
    merged = OmegaConf.merge(OmegaConf.structured(schema_for(name)), OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    obj = OmegaConf.to_object(merged)
    assert obj is not None


def test_large_recipe_is_the_headline_job():
    cfg = OmegaConf.load(CONFIG_DIR / "pretrain_large.yaml")
    assert cfg.model.global_batch_size == 32768 and cfg.model.vision.fp8 is True
    assert cfg.model.teacher.tensor_parallel == 8 and cfg.model.vision.patch_size == 14
    assert "laion2b" in cfg.model.train_ds.urls and "recap" in cfg.model.train_ds.urls
