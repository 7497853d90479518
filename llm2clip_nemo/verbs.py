"""The verb table: each `llm2clip-nemo <verb>` and the module whose `main(argv) -> int` runs it.

Below both `cli` (which parses the command line) and `launch` (whose tasks run a verb on each
rank), so neither imports the other. Modules are imported lazily by `run`: `--help` stays instant
and one verb's heavy imports never slow another. Standard library only: the sbatch scripts import
this package with a bare `python3` on the batch host (`launch.describe`).
"""
from __future__ import annotations

import importlib

VERBS: dict[str, tuple[str, str]] = {
    "caption-contrastive": ("llm2clip_nemo.recipes.caption_contrastive", "Stage 1: contrastive LoRA fine-tune of the LLM"),
    "extract": ("llm2clip_nemo.recipes.extract", "Teacher embeddings over image-text shards -> sidecars"),
    "pretrain": ("llm2clip_nemo.recipes.train_clip", "Stage 2: train a CLIP ViT from scratch against the LLM teacher"),
    "finetune": ("llm2clip_nemo.recipes.train_clip", "Stage 2: fine-tune a pretrained CLIP ViT against the LLM teacher"),
    "evaluate": ("llm2clip_nemo.recipes.evaluate", "Retrieval, zero-shot classification and CRA"),
    "convert": ("llm2clip_nemo.convert.cli", "import-llm / export-llm / export-hf checkpoint conversion"),
    "data": ("llm2clip_nemo.data.cli", "build shards, the demo dataset, inspect"),
    "launch": ("llm2clip_nemo.launch.cli", "Run any verb on SLURM (submitit) or locally"),
    "plan": ("llm2clip_nemo.launch.plan", "FLOPs, memory and wall-time estimates for a config"),
    "doctor": ("llm2clip_nemo.launch.doctor", "Check the distributed wiring: ranks, nodes, backend, all-reduce"),
    "info": ("llm2clip_nemo.recipes.info", "What this machine offers: CUDA, TE, apex, FP8, versions"),
}

# One recipe module serves two verbs; the verb is its `mode`.
MODE_VERBS = ("pretrain", "finetune")


def run(verb: str, argv: list[str]) -> int:
    """Import the verb's module and return `main(argv)` as an int (None -> 0). KeyError for an unknown verb."""
    module = importlib.import_module(VERBS[verb][0])
    if verb in MODE_VERBS:
        return int(module.main(argv, mode=verb) or 0)
    return int(module.main(argv) or 0)
