"""`llm2clip-nemo info`: what this machine offers, as the code will see it."""
from __future__ import annotations

import importlib.metadata as md

import torch

from ..config.cli_args import verb_parser
from ..runtime import probes


def report() -> dict:
    te, apex, fp8 = probes.transformer_engine(), probes.apex(), probes.fp8_capable()
    versions = {}
    for pkg in ("torch", "megatron-core", "nemo_toolkit", "transformers", "peft", "webdataset", "submitit"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "absent"
    return {
        "cuda": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count(),
        "transformer_engine": f"{'yes' if te.available else 'no'} ({te.reason})",
        "apex": f"{'yes' if apex.available else 'no'} ({apex.reason})",
        "fp8": f"{'yes' if fp8.available else 'no'} ({fp8.reason})",
        **versions,
    }


def main(argv: list[str]) -> int:
    verb_parser("info", description=__doc__.strip()).parse_args(argv)
    for k, v in report().items():
        print(f"{k:<20} {v}")
    return 0
