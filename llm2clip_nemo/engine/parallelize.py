"""`parallelize`: activation checkpointing, torch.compile and data parallelism, applied to a network
written for one device, in one fixed order (torchtitan's `parallelize_*`):

  1. activation checkpointing of every transformer block (`torch.utils.checkpoint`, non-reentrant),
  2. `torch.compile` of every block (or of the whole vision tower),
  3. data parallelism: `ddp` (torch's composable `replicate`, DistributedDataParallel underneath) or
     `fsdp2` (`fully_shard` on every block, then on the root).

The order matters: checkpointing wraps the block's eager forward so compile traces the recompute
region as one higher-order op; FSDP2's unshard/reshard hooks go outermost so they run once per block
call and not inside the compiled graph or the recompute.

Every step keeps parameter names (FQNs) unchanged: checkpointing replaces the block instance's
`forward`, `nn.Module.compile()` compiles in place, `replicate` and `fully_shard` add no prefix. So a
state dict, a DCP checkpoint (engine/checkpoint.py) and the optimizer's param groups name parameters
the same way under every layout, and a run saved under one layout resumes under another.

Supported here: the stage-2 network (models/llm2clip.py `LLM2CLIP`: `.vision.decoder.layers` megatron
TransformerLayers of the local spec, `.adapter`, `.loss` with the logit scale), on CPU over gloo and
on CUDA over NCCL. Not supported or not tested:
- FSDP2 with Transformer Engine layers (`vision.transformer_impl=transformer_engine`, FP8): TE keeps
  FP8 metadata and fused weights outside `nn.Parameter` semantics that fully_shard does not shard;
  use `ddp` with TE/FP8 until that is tested on a GPU.
- Tensor or sequence parallelism of the ViT (it is TP=1 by design, DESIGN "Parallel layout").
- The ViT's own `vision.recompute` together with `activation_checkpointing` (would checkpoint twice:
  refused). `vision.recompute` is megatron's reentrant recompute on CUDA and torch's on CPU; this
  option is one implementation for both, and the one tested with fsdp2 (`vision.recompute` with
  fsdp2 on CUDA is not).
"""
from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config.paths import field_path

DATA_PARALLEL = ("ddp", "fsdp2")
COMPILE_SCOPES = ("blocks", "tower")
MIXED_PRECISION = ("auto", "bf16", "fp32")
_BLOCK_NAME = re.compile(r"(.+\.)?decoder\.layers\.\d+")
_PARALLELIZED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass
class ParallelizeConfig:
    """How the stage-2 network is parallelised (see module doc for the order the steps run in)."""

    CONFIG_PATH: ClassVar[str] = "model.parallel"
    """Where the stage-2 recipes hold it (`LLM2CLIPConfig.parallel`); messages name its fields by the
    recorded path (`config.paths.field_path`), as typed on the command line."""

    data_parallel: str = "ddp"
    """'ddp': every rank holds all parameters and optimizer state; gradients are averaged by an
    all-reduce (torch composable `replicate`, DistributedDataParallel underneath; rank 0's weights are
    broadcast at wrap time). 'fsdp2': parameters, gradients and optimizer state are sharded over the
    ranks (`fully_shard` per ViT block, then the root); a block's weights are all-gathered before its
    forward and backward, gradients reduce-scattered (averaged). Same numbers as 'ddp' up to the order
    of floating-point sums; memory per rank for weights + AdamW state drops by the world size."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward instead of storing them
    (torch.utils.checkpoint, non-reentrant): activation memory of one block instead of all, about one
    extra forward of compute. Same numbers (no dropout RNG in the ViT by default)."""
    compile: bool = False
    """torch.compile (inductor) the blocks or the tower (`compile_scope`). Needs a C++ compiler on CPU.
    The first steps are slower (compilation); same losses as eager to ~1e-6 relative in fp32."""
    compile_scope: str = "blocks"
    """'blocks': compile each transformer block (identical blocks share one compiled graph; FSDP2's
    hooks stay outside it). 'tower': compile the whole vision tower (`module.vision`, or `module`
    itself when it has no `.vision`) as one graph
    (more fusion, one longer compilation; with fsdp2 the per-block hooks are traced by dynamo)."""
    reshard_after_forward: bool = True
    """fsdp2 only: free each block's all-gathered weights after its forward and gather them again for
    the backward (ZeRO-3; least memory). False keeps them until the backward (ZeRO-2 style: one
    all-gather per step fewer, more memory). The root group is never resharded after forward (its
    parameters are used first in the backward anyway)."""
    mixed_precision: str = "auto"
    """fsdp2 only: 'bf16' = `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`: forward
    and backward in bf16 with fp32 master weights, optimizer state and gradient reduction; 'fp32' = no
    policy; 'auto' = 'bf16' on CUDA, 'fp32' on CPU. With 'ddp' only 'auto'/'fp32' (DDP keeps the
    parameters' dtype; use autocast in the training step for bf16 compute)."""
    async_checkpoint: bool = False
    """Write each training checkpoint's tensors in the background (`torch.distributed.checkpoint.async_save`
    on a gloo group of its own). The save call copies this rank's model, optimizer and EMA tensors
    (its shards under fsdp2) to CPU memory before it returns, so training goes on at once with
    unchanged numbers; the files are written by a thread while the next steps run, and the run waits
    for them before the next checkpoint and at the end of training (a failed write is raised there).
    Memory cost: one CPU copy of this rank's model + optimizer + EMA state while a write runs. A job
    that dies during the write leaves that checkpoint incomplete; resume names the newest complete one."""

    def validate(self) -> None:
        """Raise ValueError naming the field by its path (`config.paths.field_path`), the value and the fix."""
        def f(name: str) -> str:
            return field_path(self, name)

        for name, allowed in (("data_parallel", DATA_PARALLEL), ("compile_scope", COMPILE_SCOPES),
                              ("mixed_precision", MIXED_PRECISION)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{f(name)}={value!r} is not one of {', '.join(allowed)}: choose one of them.")
        if self.data_parallel == "ddp" and self.mixed_precision == "bf16":
            raise ValueError(f"{f('mixed_precision')}='bf16' needs {f('data_parallel')}='fsdp2' (DDP keeps the "
                             f"parameters' dtype): set {f('data_parallel')}=fsdp2, or {f('mixed_precision')}=auto "
                             "and use autocast.")

    def check_vision_recompute(self, vision) -> None:
        """ValueError when the ViT checkpoints its own blocks (`vision.recompute` of `vision`, a
        ViTConfig; None: no ViT) and `activation_checkpointing` would checkpoint them again. The one
        message of this rule: the recipe's config validation and `parallelize()` both call it."""
        if vision is not None and getattr(vision, "recompute", False) and self.activation_checkpointing:
            raise ValueError(f"{field_path(vision, 'recompute')}=true and {field_path(self, 'activation_checkpointing')}"
                             "=true would checkpoint every block twice: set one of them to false.")


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of `module` in order: every entry of a `decoder.layers` ModuleList
    (the ViT's megatron TransformerBlock). Raises ValueError when there are none."""
    blocks = [m for name, m in module.named_modules() if _BLOCK_NAME.fullmatch(name)]
    if not blocks:
        raise ValueError(f"{type(module).__name__} has no `decoder.layers.N` transformer blocks: pass blocks= "
                         "explicitly to parallelize().")
    return blocks


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(blocks: Sequence[nn.Module]) -> None:
    """Checkpoint each block: its instance `forward` is wrapped, so names and hooks are unchanged."""
    for block in blocks:
        if isinstance(block.forward, functools.partial) and block.forward.func is _checkpointed:
            raise ValueError(f"{type(block).__name__} is already activation-checkpointed: apply it once.")
        block.forward = functools.partial(_checkpointed, block.forward)


def _mixed_precision_policy(cfg: ParallelizeConfig, device: torch.device):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    if not bf16:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def _module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def layout_dp_group():
    """The vision tower's data-parallel group of this process's layout (`runtime.init_parallel`)."""
    from ..runtime import current_layout

    layout = current_layout()
    if layout is None:
        raise ValueError("no data-parallel group given and no parallel layout built: pass group= or call "
                         "runtime.init_parallel first.")
    return layout.vision_dp_group


def _broadcast_from_first_rank(module: nn.Module, group) -> None:
    # DDP broadcasts rank 0's weights at wrap time; fully_shard does not (it shards each rank's own
    # copy). Doing the same here keeps the two layouts interchangeable even from unequal inits.
    src = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src, group=group)


def parallelize(module: nn.Module, cfg: ParallelizeConfig, group=None,
                blocks: Sequence[nn.Module] | None = None) -> nn.Module:
    """Apply activation checkpointing, compile and data parallelism (`cfg`) to `module` in place.

    Args:
        module: the network, built the same on every rank and already on its device (the stage-2
            `LLM2CLIP`, or any module with `decoder.layers.N` blocks).
        cfg: what to apply (validated here).
        group: the data-parallel process group (the vision tower's: `ParallelLayout.vision_dp_group`);
            None = the layout's (`runtime.current_layout()`). torch.distributed must be initialised (also for one rank).
        blocks: the transformer blocks (default `transformer_blocks(module)`).
    Returns `module` itself (the same object, now wrapped in place; parameter names unchanged).
    Raises ValueError for a bad config or when `module` was already parallelised.
    Call it before building the optimizer: fsdp2 replaces the parameters by sharded DTensors.
    """
    cfg.validate()
    if not dist.is_initialized():
        raise ValueError("parallelize() needs torch.distributed initialised (runtime.init_parallel), also for one rank.")
    group = group if group is not None else layout_dp_group()
    if module in _PARALLELIZED:
        raise ValueError("this module is already parallelised: call parallelize() once per module.")
    blocks = list(blocks) if blocks is not None else transformer_blocks(module)
    cfg.check_vision_recompute(getattr(getattr(module, "vision", None), "cfg", None))
    # 1. activation checkpointing
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(blocks)
    # 2. compile (in place: nn.Module.compile keeps the FQNs, unlike torch.compile(module))
    if cfg.compile:
        targets = blocks if cfg.compile_scope == "blocks" else [getattr(module, "vision", module)]
        for m in targets:
            m.compile()
    # 3. data parallelism
    _PARALLELIZED.add(module)
    device = _module_device(module)
    if cfg.data_parallel == "ddp":
        from torch.distributed._composable.replicate import replicate

        replicate(module, process_group=group, device_ids=[device] if device.type == "cuda" else None)
        return module
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    _broadcast_from_first_rank(module, group)
    mesh = DeviceMesh.from_group(group, device.type)
    mp = _mixed_precision_policy(cfg, device)
    scalars = replicate_scalar_parameters(module, group)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward, mp_policy=mp)
    fully_shard(module, mesh=mesh, reshard_after_forward=False, mp_policy=mp, ignored_params=scalars)
    return module


def replicate_scalar_parameters(module: nn.Module, group) -> set[nn.Parameter]:
    """fully_shard cannot shard 0-dim parameters (the loss's `logit_scale`, `logit_bias`), and making
    them 1-D would change the checkpoint and export format. They stay plain, replicated tensors, left
    out of FSDP (`ignored_params`); a post-accumulate-grad hook averages their gradient over `group`
    as DDP would, so every rank's optimizer applies the same update. Returns them."""
    world = dist.get_world_size(group)

    def average(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad, group=group)  # SUM: gloo has no AVG
        p.grad.div_(world)

    scalars = {p for p in module.parameters() if p.ndim == 0}
    for p in scalars:
        if p.requires_grad and world > 1:
            p.register_post_accumulate_grad_hook(average)
    return scalars


def clip_grad_norm_(parameters, max_norm: float, group=None) -> torch.Tensor:
    """Scale gradients in place so their global L2 norm is at most `max_norm`; return that norm (fp32).

    The formula is torch's `clip_grad_norm_` (coefficient min(1, max_norm / (norm + 1e-6))) over the
    whole model, for every layout: plain (DDP, replicated) gradients count once, FSDP2's sharded
    DTensor gradients are summed over `group` (None: the layout's, `layout_dp_group`). torch's own function cannot
    mix the two kinds, which fsdp2 produces here (the replicated 0-dim logit parameters). Collective
    when any gradient is sharded: every rank of `group` must call it.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    sharded = [isinstance(g, DTensor) and any(pl.is_shard() for pl in g.placements) for g in grads]
    zero = torch.zeros((), dtype=torch.float32, device=local[0].device if local else "cpu")
    sq_sharded = sum((t.float().pow(2).sum() for t, s in zip(local, sharded) if s), zero)
    sq_replicated = sum((t.float().pow(2).sum() for t, s in zip(local, sharded) if not s), zero.clone())
    if any(sharded):
        dist.all_reduce(sq_sharded, group=group if group is not None else layout_dp_group())
    norm = (sq_sharded + sq_replicated).sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for t in local:
        t.mul_(coef.to(t.dtype))
    return norm
