"""Seeding: one call that makes a run repeatable on CPU and GPU."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, tp_rank: int = 0) -> None:
    """Seed python, numpy and torch. On CUDA also seed megatron's model-parallel RNG tracker, so
    TP ranks draw different dropout masks inside TP regions and equal ones outside."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
