"""The training engine both stages share (issue 15 item 1): optimizer and parameter groups, LR
schedule, gradient accumulation, clipping, finite-loss skip, EMA, throughput and the checkpoint
payload. Layer: below `models/` (the NeMo adapters), above data/text/vision/losses."""
from .ema import EMA, EmaConfig, ema_decay
from .engine import StepResult, TrainEngine, rng_state, set_rng_state
from .optim import OptimConfig, lr_at, no_weight_decay, param_groups

__all__ = ["EMA", "EmaConfig", "OptimConfig", "StepResult", "TrainEngine", "ema_decay", "lr_at", "no_weight_decay",
           "param_groups", "rng_state", "set_rng_state"]
