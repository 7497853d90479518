"""`TrainEngine`: the optimisation both training stages share, below their NeMo/Lightning shells.

    engine = TrainEngine(net, cfg.optim, max_steps, dp_group=..., data=stream, ema=cfg.ema)
    engine.attach(backward=module.manual_backward, optimizer_step=module.optimizers().step)
    out = engine.train_step(batch, loss_fn, samples=len(batch))     # once per micro-batch
    payload = engine.state_dict()    # the whole state in memory;  engine.load_state_dict(payload) on resume
    engine.save_sharded(dir); meta = engine.meta_state_dict()   # a run's checkpoint: tensors via DCP (any
    engine.load_sharded(dir, meta)                             # layout, world size) + small counters

One call of `train_step` is one micro-batch: it records the batch in the data position, sets the
learning rate (`optim.lr_at`), computes the loss, agrees with the other data-parallel ranks whether
it is finite, and backpropagates it (divided by the micro-batch count). After `micro_batches`
calls it clips the gradient norm, steps the optimizer, updates the EMA and measures throughput. A
non-finite loss on any rank of the data-parallel group it was given skips that whole optimizer
step on every rank (no update, no step counted); more than `optim.max_nonfinite_steps` such steps
raise RuntimeError.

Lightning stays the outer loop: `attach` hands the engine Lightning's `manual_backward` and its
wrapped optimizer's `step` (which counts `trainer.global_step`); without `attach` the engine uses
`loss.backward()` and the bare optimizer (plain-torch use, tests).

Length (~340 lines): the step and everything its checkpoint holds are one class on purpose, so the
data position, optimizer, EMA, step and RNG are saved and restored by the code that owns them.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .ema import EMA, EmaConfig
from .optim import OptimConfig, build_optimizer, lr_at, param_groups

STATE_VERSION = 1


@dataclass
class StepResult:
    """What one `train_step` did: `loss` (detached, this micro-batch), `stepped` (an optimizer step
    ended here), `step` (index of the optimizer step this micro-batch belongs to), `metrics` to log
    (empty unless a step ended or was skipped)."""

    loss: torch.Tensor
    stepped: bool
    step: int
    metrics: dict = field(default_factory=dict)


def rng_state() -> dict:
    """The generators a training process draws from: torch CPU, CUDA (all devices, if any), python, numpy."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainEngine:
    """Optimizer, schedule, accumulation, clipping, finite-loss skip, EMA, throughput and checkpoint
    payload of one trained module (see module docstring).

    model: the module whose `requires_grad` parameters are trained (stage 2: the CLIP network;
        stage 1: the LoRA-wrapped LLM). Its trainable weights are the checkpoint's "model".
    optim / max_steps: `OptimConfig` and the run's optimizer steps (the schedule's horizon).
    layer_of / num_layers: layer id of a parameter name for layer-wise lr decay (`optim.param_groups`).
    dp_group: the data-parallel process group the finite-loss vote and the samples count cover
        (None: this process alone).
    data: the training data source (any object with `state_dict`/`load_state_dict`, optionally
        `track(batch)`, called for every consumed micro-batch, and `load_state_dicts(states)`, every
        saved rank's state, to resume at another world size); its state is the checkpoint's "data".
        `load_state_dict(s)` returning False means the position was not taken (a fresh start).
    ema: `EmaConfig` (None or enabled=false: no EMA).
    micro_batches: micro-batches per optimizer step (gradient accumulation).
    throughput: optional object with `update(samples: int, seconds: float) -> dict`, given the
        samples of all data-parallel ranks and the step's wall time; its non-None values are logged.
    log_path: a JSONL file that gets {"step", "loss", "lr", **extra_metrics()} per optimizer step
        (written by the process with `write_log=True` only).
    """

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, max_steps: int, *,
                 layer_of: Callable[[str], int] | None = None, num_layers: int = 0, dp_group=None, data=None,
                 ema: EmaConfig | None = None, micro_batches: int = 1, throughput=None,
                 log_path: str | Path | None = None, write_log: bool = True,
                 extra_metrics: Callable[[], dict] | None = None):
        if micro_batches < 1:
            raise ValueError(f"micro_batches={micro_batches} must be >= 1")
        self.model, self.cfg, self.max_steps = model, optim, max_steps
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(param_groups(self.trainable, optim, layer_of, num_layers), optim)
        self.ema = EMA(self.trainable, ema) if ema is not None and ema.enabled else None
        self.dp_group, self.data, self.micro_batches = dp_group, data, micro_batches
        self.throughput, self.extra_metrics = throughput, extra_metrics
        self.log_path = Path(log_path) if log_path is not None and write_log else None
        self.step = 0
        """Optimizer steps done (skipped steps not counted); equals Lightning's trainer.global_step."""
        self.nonfinite_steps = 0
        self.loss_log: list[tuple[int, float]] = []
        """(step, mean micro-batch loss) of every optimizer step this process made."""
        self._backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()
        self._optimizer_step: Callable[[], object] = self.optimizer.step
        self._pending: dict | None = None
        self._micro = 0
        self._acc: dict = {}

    def attach(self, backward: Callable[[torch.Tensor], None], optimizer_step: Callable[[], object]) -> None:
        """Use the outer loop's backward (e.g. Lightning's `manual_backward`: precision, DDP hooks) and
        optimizer step (Lightning's wrapped optimizer, which advances `trainer.global_step`)."""
        self._backward, self._optimizer_step = backward, optimizer_step

    def check_parameters(self, module: torch.nn.Module) -> None:
        """RuntimeError unless `module`'s trainable parameters are the very tensors the optimizer holds
        (a strategy that re-creates parameters after the engine was built, e.g. Lightning's FSDP,
        would leave the optimizer stepping stale copies)."""
        if {id(p) for p in module.parameters() if p.requires_grad} != {id(p) for _, p in self.trainable}:
            raise RuntimeError("the model's trainable parameters were replaced after the training engine built its "
                               "optimizer (trainer.strategy=fsdp wraps them): use trainer.strategy=ddp.")

    # ---- one micro-batch ------------------------------------------------------------------------
    def lr(self) -> float:
        """The learning rate of the current step before layer decay (`optim.lr_at`)."""
        return lr_at(self.step, self.cfg, self.max_steps)

    def _dp_size(self) -> int:
        if self.dp_group is None or not dist.is_initialized():
            return 1
        return dist.get_world_size(self.dp_group)

    def agreed_finite(self, loss: torch.Tensor) -> bool:
        """True when the loss is finite on every rank of the data-parallel group (a MIN all-reduce)."""
        flag = torch.tensor([float(torch.isfinite(loss.detach()).all().item())], device=loss.device)
        if self._dp_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.dp_group)
        return bool(flag.item())

    def train_step(self, batch, loss_fn: Callable[[object], torch.Tensor], samples: int) -> StepResult:
        """Train on one micro-batch: `loss_fn(batch)` -> scalar loss; `samples` = this rank's samples in it."""
        if self._pending is not None:
            self._apply_pending()
        if self.data is not None and hasattr(self.data, "track"):
            self.data.track(batch)  # consumed, whether or not its step is applied
        if self._micro == 0:
            lr = self.lr()
            self._acc = {"t0": time.perf_counter(), "samples": 0, "losses": [], "finite": True, "lr": lr}
            self.optimizer.zero_grad(set_to_none=True)
            for g in self.optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
        loss = loss_fn(batch)
        step = self.step
        if self.agreed_finite(loss):
            self._backward(loss if self.micro_batches == 1 else loss / self.micro_batches)
            self._acc["losses"].append(loss.detach())
        else:
            self._acc["finite"] = False
        self._acc["samples"] += samples
        self._micro += 1
        if self._micro < self.micro_batches:
            return StepResult(loss.detach(), False, step)
        self._micro = 0
        if not self._acc["finite"]:
            return StepResult(loss.detach(), False, step, self._skip())
        return StepResult(loss.detach(), True, step, self._finish_step(step))

    def _skip(self) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        if self.nonfinite_steps > self.cfg.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.nonfinite_steps} steps had a NaN/inf loss (limit model.optim.max_nonfinite_steps="
                f"{self.cfg.max_nonfinite_steps}): lower model.optim.lr, check the data, or resume from "
                "an earlier checkpoint.")
        return {"nonfinite_steps": float(self.nonfinite_steps)}

    def _finish_step(self, step: int) -> dict:
        if self.cfg.grad_clip > 0:
            self._clip([p for _, p in self.trainable])
        lr = self._acc["lr"]
        self._optimizer_step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        losses = self._acc["losses"]
        value = (losses[0] if len(losses) == 1 else torch.stack(losses).mean()).item()
        self.loss_log.append((step, value))
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": value, "lr": lr, **self._extra()}) + "\n")
        if losses and losses[0].is_cuda:
            torch.cuda.synchronize()
        seconds = max(time.perf_counter() - self._acc["t0"], 1e-9)
        samples = self._acc["samples"] * self._dp_size()
        metrics = {"loss": value, "lr": lr, **self._extra(), "samples_per_s": samples / seconds}
        if self.throughput is not None:
            metrics.update({k: float(v) for k, v in self.throughput.update(samples, seconds).items()
                            if isinstance(v, (int, float)) and k != "samples_per_s"})
        return metrics

    def _clip(self, params: list[torch.Tensor]) -> None:
        """Clip the gradients' global L2 norm to `optim.grad_clip`: torch's function for plain tensors,
        `parallelize.clip_grad_norm_` (the same formula, sharded norms summed over `dp_group`) when the
        model is sharded (fsdp2 DTensor parameters)."""
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in params):
            from .parallelize import clip_grad_norm_

            clip_grad_norm_(params, self.cfg.grad_clip, group=self.dp_group)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    def _extra(self) -> dict:
        return self.extra_metrics() if self.extra_metrics is not None else {}

    # ---- EMA ------------------------------------------------------------------------------------
    def ema_applied(self):
        """Context in which the trained parameters hold their EMA (a no-op without EMA)."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    # ---- the checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole training state in memory (plain-torch use): {"version", "step", "nonfinite_steps",
        "model" (trainable weights by parameter name, CPU copies), "optimizer", "ema" (or None), "data"
        (the data source's position, or None), "rng" (`rng_state()`)}. Take it at an optimizer-step
        boundary (Lightning's step checkpoints are): gradients of a half-accumulated step are not part
        of it. Unsharded models only; a run checkpoints with `save_sharded` + `meta_state_dict`."""
        return {**self.meta_state_dict(), "model": {n: p.detach().cpu().clone() for n, p in self.trainable},
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def meta_state_dict(self) -> dict:
        """The training state without tensors of the model's size: {"version", "step", "nonfinite_steps",
        "ema": {"updates"} or None, "data", "rng"} (this process's data position and RNG)."""
        return {"version": STATE_VERSION, "step": self.step, "nonfinite_steps": self.nonfinite_steps,
                "ema": {"updates": self.ema.updates} if self.ema is not None else None,
                "data": self.data.state_dict() if self.data is not None else None, "rng": rng_state()}

    def save_sharded(self, path: str | Path, async_save: bool = False):
        """Write the model, optimizer and EMA tensors to DCP directory `path` (`engine.checkpoint.save_checkpoint`:
        every rank its own shards, whatever the layout; FQNs as in the unwrapped model), with each rank's
        data position (`rank_state`) and RNG. Collective over `dp_group`. Returns the `PendingSave`;
        `async_save`: the tensors are copied to CPU before the call returns and written in the
        background (`PendingSave.wait()` before the next save and before exit)."""
        from .checkpoint import save_checkpoint

        rank_state = {"data": self.data.state_dict() if self.data is not None else None}
        return save_checkpoint(path, self.model, self.optimizer, step=self.step, rank_state=rank_state,
                               modules=self._sharded_modules(), async_save=async_save, group=self.dp_group)

    def load_sharded(self, path: str | Path, meta: dict) -> bool:
        """Restore a checkpoint written by `save_sharded` (tensors, into the current layout and world size)
        and its `meta_state_dict()` (counters). The data position comes first, before any collective
        (`resume.restore_data_position`: this rank's own at the world size that saved, every saved rank's
        at another). The RNG is restored at the world size that saved (applied at the next `train_step`,
        after the outer loop has built its data iterators) and left as it is otherwise. Collective over
        `dp_group`. Returns whether the data position was restored. ValueError as `load_state_dict`;
        errors of the data position as `restore_data_position` raises them."""
        from .checkpoint import load_checkpoint
        from .resume import restore_data_position

        self.check_meta(meta)
        same, restored = restore_data_position(self.data, path, self.dp_group)
        load_checkpoint(path, self.model, self.optimizer, modules=self._sharded_modules(), group=self.dp_group)
        if self.ema is not None:
            self.ema.updates = int(meta["ema"]["updates"])
        self.step, self.nonfinite_steps = int(meta["step"]), int(meta["nonfinite_steps"])
        self._pending = {"optimizer": None, "rng": rng_state() if same else None}
        return restored

    def _sharded_modules(self) -> dict:
        return {"ema": _EmaShadows(self.ema)} if self.ema is not None else {}

    def check_meta(self, state: dict) -> None:
        """ValueError unless `state` (a `meta_state_dict()`) is of this version and has EMA exactly when this run has."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"training state version {state.get('version')!r} is not {STATE_VERSION}")
        if (state["ema"] is None) != (self.ema is None):
            raise ValueError(f"the checkpoint {'has no' if state['ema'] is None else 'has an'} EMA but this run sets "
                             f"model.ema.enabled={self.ema is not None}: resume with the setting it was trained with.")

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`. Weights, counters, EMA and data position at once; the optimizer
        state and the RNG states at the next `train_step`, i.e. after the outer loop has moved the
        model to its device and built its data iterators (which draw from torch's RNG).
        Raises KeyError when the trainable parameter names differ, ValueError on another version or
        when the checkpoint has EMA and this run not (or the reverse)."""
        self.check_meta(state)
        mine = dict(self.trainable)
        if set(state["model"]) != set(mine):
            raise KeyError(f"checkpoint does not fit the trained parameters: missing "
                           f"{sorted(set(mine) - set(state['model']))[:6]}, unexpected "
                           f"{sorted(set(state['model']) - set(mine))[:6]}.")
        with torch.no_grad():
            for n, p in mine.items():
                p.copy_(state["model"][n])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.data is not None and state["data"] is not None:
            self.data.load_state_dict(state["data"])
        self.step, self.nonfinite_steps = int(state["step"]), int(state["nonfinite_steps"])
        self._pending = {"optimizer": state["optimizer"], "rng": state["rng"]}

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending["optimizer"] is not None:
            self.optimizer.load_state_dict(pending["optimizer"])
        if pending["rng"] is not None:
            set_rng_state(pending["rng"])


class _EmaShadows:
    """The EMA's shadow tensors as a DCP `Stateful` ({parameter name: shadow}, the live tensors, so DCP
    loads into them in place; DTensor shards under fsdp2, like the parameters they follow)."""

    def __init__(self, ema: EMA):
        self.ema = ema

    def state_dict(self) -> dict:
        self.ema._follow()
        return dict(self.ema.shadow)

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for n, t in sd.items():
                if t is not self.ema.shadow[n]:
                    self.ema.shadow[n].copy_(t)
