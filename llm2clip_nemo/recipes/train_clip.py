"""`llm2clip-nemo pretrain|finetune --config-name X [overrides]`: stage 2, the CLIP ViT against the teacher.

Assembles runtime (process groups; the TP teacher inside groups of t ranks), the Lightning trainer
with NeMo exp_manager (TensorBoard, step checkpoints with the data position, resume_if_exists),
and `LLM2CLIPModel`. A resumed run continues from `<exp_dir>/<name>/checkpoints/*last.ckpt`.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, load_config, parse_command_line
from ..config.help import recipe_help, wants_help
from ..config.paths import field_path, replace_config
from ..config.plan import PlanConfig
from ..data.errors import DataSourceError
from ..models.llm2clip_config import LLM2CLIPConfig
from ..runtime import DistEnv, LayoutError, check_tp, processes_per_node
from .trainer import ExpManagerConfig, TrainerConfig, build_trainer


@dataclass
class TrainCLIPConfig:
    model: LLM2CLIPConfig = field(default_factory=LLM2CLIPConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Knobs of `llm2clip-nemo plan` (capacity estimates); training ignores them."""


def adopt_finetune_architecture(model: LLM2CLIPConfig) -> LLM2CLIPConfig:
    """model.mode=finetune: a copy of `model` whose vision fields left to the checkpoint (0 or
    'checkpoint') take the values of `model.init_from`'s config, the others checked equal to them.
    ConfigError naming the field, both values and the fix; other modes are returned unchanged."""
    if model.mode != "finetune":
        return model
    from ..formats.vision_checkpoint import adopt_checkpoint_architecture

    vision = adopt_checkpoint_architecture(model.vision, model.init_from)
    vision.validate()
    return replace_config(model, vision=vision)


def check_teacher_tp(cfg: TrainCLIPConfig, world: int, env: DistEnv | None = None) -> None:
    """The layout's one TP rule (`runtime.layout.check_tp`) on the ranks a run of `cfg` starts: `world`
    processes; per node, what the launcher of `env` (a `runtime.DistEnv`) says, else trainer.devices (the
    processes per node Lightning starts). LayoutError naming model.teacher.tensor_parallel and the fix.
    `llm2clip-nemo plan` calls it too (no env), so a plan and its run refuse a TP with the same line."""
    per_node, source = processes_per_node(env) if env is not None else (None, "")
    if per_node is None:
        per_node, source = cfg.trainer.devices, f"trainer.devices={cfg.trainer.devices}"
    check_tp(cfg.model.teacher.tensor_parallel, world, per_node, field=field_path(cfg.model.teacher, "tensor_parallel"),
             per_node_source=source)


def prepare_run(cfg: TrainCLIPConfig, mode: str | None = None) -> TrainCLIPConfig:
    """The checks that read the launch environment and the file system, made where a run starts (a
    config's `validate()` reads neither), and the fine-tune's adopted architecture. Returns a resolved
    copy of `cfg`; ConfigError naming the field and the fix: the verb is not model.mode, the teacher's
    TP does not divide the ranks, the teacher is missing or disagrees with its contract, the fine-tune
    checkpoint does not fit model.vision."""
    if mode is not None and cfg.model.mode != mode:
        raise ConfigError(f"`llm2clip-nemo {mode}` but the config says model.mode={cfg.model.mode}: "
                          f"use the {cfg.model.mode} verb or set model.mode={mode}.")
    # the ranks Lightning will start (trainer.devices x num_nodes) may not exist yet: the layout's one
    # TP rule is applied to them here, and again by `init_parallel` to the ranks actually launched
    env = DistEnv.from_environ()
    check_teacher_tp(cfg, max(env.world_size, cfg.trainer.world_size), env)
    cfg.model.teacher.check_available()
    resolved = copy.deepcopy(cfg)
    resolved.model = adopt_finetune_architecture(resolved.model)
    return resolved


def per_rank_batch(global_batch: int, world: int, micro_batches: int = 1) -> int:
    """Samples per micro-batch per rank of a `global_batch` (samples per optimizer step, all ranks)."""
    if global_batch % (world * micro_batches):
        per = f"the {world} ranks" + (f" x {micro_batches} micro-batches (trainer.accumulate_grad_batches)"
                                      if micro_batches > 1 else "")
        raise ConfigError(f"model.global_batch_size={global_batch} is not divisible by {per}: "
                          f"use a multiple of {world * micro_batches}.")
    return global_batch // (world * micro_batches)


def run(cfg: TrainCLIPConfig, mode: str | None = None) -> dict:
    """Train (after `prepare_run`); returns {'log_dir', 'losses': [(step, loss)], 'validation': [...], 'nonfinite_steps'}."""
    import torch
    import torch.distributed as dist

    from ..models.llm2clip import LLM2CLIPModel
    from ..models.nemo_base import to_dictconfig
    from ..runtime import init_parallel
    from ..runtime.throughput import meter_for

    cfg = prepare_run(cfg, mode)
    groups = init_parallel(cfg.model.teacher.tensor_parallel)
    micro = cfg.trainer.accumulate_grad_batches
    if cfg.model.global_batch_size:
        cfg.model.train_ds.batch_size = per_rank_batch(cfg.model.global_batch_size, groups.world_size, micro)
    trainer, log_dir = build_trainer(cfg, self_parallel=True)
    model = LLM2CLIPModel(to_dictconfig(cfg.model), trainer=trainer, groups=groups)
    # samples/s per device, model TFLOP/s and MFU of every step (runtime.throughput), logged and summarised
    meter = meter_for(cfg.model, model.net.adapter.input_dim, groups.world_size, groups.device.type,
                      threads=torch.get_num_threads())
    engine = model.build_engine(log_path=Path(log_dir) / "losses.jsonl", micro_batches=micro, throughput=meter)
    try:
        trainer.fit(model)
    except BaseException:  # the background checkpoint write, if any, still completes; its links need every rank
        finish_checkpoint_write(model)
        raise
    model.wait_for_checkpoint()  # on_train_end did, unless the fit ended without it
    result = {"log_dir": str(log_dir), "losses": engine.loss_log, "validation": model.val_history,
              "nonfinite_steps": engine.nonfinite_steps, "global_step": trainer.global_step,
              "throughput": meter.summary(), "data": data_summary(model._stream, groups.vision_dp_group)}
    if groups.rank == 0:
        (Path(log_dir) / "result.json").write_text(json.dumps(result, indent=2, default=str))
    model.save_nemo(Path(log_dir) / "model.nemo")  # collective: gathers sharded weights
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    result["model"] = model
    return result


def data_summary(stream, group) -> dict | None:
    """The training stream's counts over every rank of `group` (collective; each rank reads its own
    data slots): `ImageTextStream.summary()` of each rank combined (`stream_state.combine_summaries`)."""
    import torch.distributed as dist

    from ..data.stream_state import combine_summaries

    if stream is None:
        return None
    mine = stream.summary()
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return mine
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, mine, group=group)
    return combine_summaries(parts)


def finish_checkpoint_write(model) -> None:
    """On a fit that ended in an error: let this rank's background checkpoint write finish (its
    collectives run on their own group, so every live rank completes it) without the collective
    hard-linking, and log a failed write instead of raising it over the error being handled."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        model.wait_for_checkpoint(link=False)
    except (Exception, CheckpointException) as e:  # the fit's own error is the one to report
        from nemo.utils import logging

        logging.error(f"the background checkpoint write failed too: {e}")


def main(argv: list[str], mode: str = "pretrain") -> int:
    if wants_help(argv):
        print(recipe_help(f"llm2clip-nemo {mode}", __doc__, TrainCLIPConfig, mode))
        return 0
    cl = parse_command_line(mode, argv)
    try:
        cfg = load_config(TrainCLIPConfig, cl.config_name, cl.overrides, cl.config_path)
        res = run(cfg, mode)
    except (ConfigError, LayoutError) as e:  # LayoutError: the TP size does not fit the launched ranks
        print(f"llm2clip-nemo {mode}: config error: {e}", file=sys.stderr)
        return 2
    except DataSourceError as e:  # unusable data.urls (missing shards, energon constructs we do not map...)
        print(f"llm2clip-nemo {mode}: data error: {e}", file=sys.stderr)
        return 2
    last = res["validation"][-1] if res["validation"] else {}
    print(f"done: {res['global_step']} steps, last loss {res['losses'][-1][1] if res['losses'] else float('nan'):.4f}"
          + (f", held-out R@1 i2t {last['i2t_R@1']:.3f} t2i {last['t2i_R@1']:.3f}" if last else "")
          + f"; logs in {res['log_dir']}")
    return 0
