"""`llm2clip-nemo <verb> [args...]`: maps verbs to recipe entry points, nothing else.

Each verb names a module with a `main(argv) -> int` function. Modules are imported lazily so
`llm2clip-nemo --help` is instant and one verb's heavy imports never slow another.
"""
from __future__ import annotations

import importlib
import sys

from .config.cli_args import usage_error

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


def usage() -> str:
    lines = ["usage: llm2clip-nemo VERB [SUBCOMMAND] [--config-name NAME] [--config-path DIR] [key=value ...] "
             "[--flag [VALUE] ...] [-h | --help]", "", "verbs:"]
    lines += [f"  {v:<20} {doc}" for v, (_, doc) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        return usage_error("llm2clip-nemo", f"unknown verb {verb!r}; choose one of {', '.join(VERBS)}")
    module = importlib.import_module(VERBS[verb][0])
    if verb in ("pretrain", "finetune"):
        return int(module.main(rest, mode=verb) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
