"""Lightning trainer + NeMo exp_manager, shared by the stage-1 and stage-2 recipes.

    trainer, log_dir = build_trainer(cfg)        # cfg has .trainer (TrainerConfig) and .exp_manager

Everything is `lightning.pytorch` (what NeMo 3.0 uses); the separately installed
`pytorch_lightning` package is never imported: its Trainer is a different class that NeMo refuses.
Both stages optimise manually through `engine.TrainEngine` (clipping, accumulation, samples/s), so
Lightning gets neither gradient_clip_val nor accumulate_grad_batches. Validation is scheduled by
global step (`check_val_every_n_epoch=None`), so resumed runs and step-indexed data loaders need no
notion of epochs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..config import ConfigError
from ..config.paths import field_path


@dataclass
class TrainerConfig:
    CONFIG_PATH: ClassVar[str] = "trainer"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    accelerator: str = "auto"
    """auto | cpu | gpu."""
    devices: int = 1
    """Processes (GPUs) per node."""
    num_nodes: int = 1
    """Nodes."""
    strategy: str = "auto"
    """auto | ddp | fsdp (fsdp: GPU only, for LLMs whose weights do not fit one device)."""
    precision: str = "auto"
    """auto (bf16-mixed on GPU, 32-true on CPU) or any Lightning precision string."""
    max_steps: int = 100
    """Optimizer steps of the whole run (a resumed run continues up to it)."""
    val_check_interval: int = 50
    """Validate every N optimizer steps."""
    log_every_n_steps: int = 1
    """Logging period in steps (TensorBoard and the progress bar)."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step (gradient accumulation, done by the training engine; the
    gradient-norm clip is model.optim.grad_clip)."""
    enable_progress_bar: bool = True
    """TQDM bar with loss and samples/s."""
    deterministic: bool = False
    """torch deterministic algorithms."""
    max_time: str | None = None
    """Wall-clock budget "DD:HH:MM:SS" (stops cleanly, checkpoint included); None = no limit."""

    def validate(self) -> None:
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise ConfigError(f"{field_path(self, 'accelerator')}={self.accelerator!r}: choose auto, cpu or gpu.")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            raise ConfigError(f"{field_path(self, 'strategy')}={self.strategy!r}: choose auto, ddp or fsdp.")
        if (self.max_steps < 1 or self.val_check_interval < 1 or self.devices < 1 or self.num_nodes < 1
                or self.accumulate_grad_batches < 1):
            raise ConfigError(f"{', '.join(field_path(self, n) for n in ('max_steps', 'val_check_interval', 'devices', 'num_nodes', 'accumulate_grad_batches'))} "
                              f"must be >= 1 (got {self.max_steps}, {self.val_check_interval}, {self.devices}, {self.num_nodes}, "
                              f"{self.accumulate_grad_batches}).")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


@dataclass
class ExpManagerConfig:
    CONFIG_PATH: ClassVar[str] = "exp_manager"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    exp_dir: str = "nemo_experiments"
    """Root of the run directories."""
    name: str = "run"
    """Run name: the log dir is exp_dir/name (fixed, so resume_if_exists finds it again)."""
    resume_if_exists: bool = True
    """Continue from <log_dir>/checkpoints/*last.ckpt when present."""
    resume_from_checkpoint: str = ""
    """A .ckpt to resume from when the checkpoints folder holds no *last.ckpt (or resume_if_exists=false),
    e.g. an earlier step after an incomplete last one was removed. NeMo's rule: while resume_if_exists=true
    a *last.ckpt wins, so a requeued job goes on from its newest checkpoint."""
    checkpoint_every_n_steps: int = 50
    """Save a checkpoint every N optimizer steps."""
    save_top_k: int = 2
    """Step checkpoints kept (the latest ones), besides *last.ckpt."""
    save_nemo_on_train_end: bool = False
    """Also write a .nemo archive of the model at the end."""
    create_tensorboard_logger: bool = True
    """TensorBoard event files under the log dir."""

    def validate(self) -> None:
        if self.checkpoint_every_n_steps < 1:
            raise ConfigError(f"{field_path(self, 'checkpoint_every_n_steps')}={self.checkpoint_every_n_steps} must be >= 1.")


def resolve_precision(p: str) -> str:
    if p == "auto":
        return "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return p


def _self_parallel_strategy():
    """A Lightning DDPStrategy that leaves the LightningModule unwrapped: for a model that parallelises
    itself (stage 2: `engine.parallelize` over its vision DP group, before its optimizer is built).
    It joins the process group `runtime.init_parallel` already made and adds no gradient reduction."""
    from lightning.pytorch.strategies import DDPStrategy

    class SelfParallelStrategy(DDPStrategy):
        def configure_ddp(self) -> None:
            pass  # the model's own parallelize() did it

        def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
            hook = getattr(self.lightning_module, "save_sharded_checkpoint", None)
            keep = hook(checkpoint, sharded_dir(filepath)) if hook is not None else None  # every rank
            super().save_checkpoint(checkpoint, filepath, storage_options)  # rank 0 writes the .ckpt
            if keep is not None and self.is_global_zero:  # the .ckpt now points at `keep`: older steps go
                for old in keep.parent.iterdir():
                    if old != keep:
                        shutil.rmtree(old, ignore_errors=True)

        def remove_checkpoint(self, filepath) -> None:
            super().remove_checkpoint(filepath)
            if self.is_global_zero:
                shutil.rmtree(sharded_dir(filepath), ignore_errors=True)

    return SelfParallelStrategy()


def sharded_dir(ckpt_path) -> Path:
    """The directory beside a Lightning .ckpt that holds its sharded tensors: `<stem>.dcp/`."""
    return Path(ckpt_path).with_suffix(".dcp")


def resolve_strategy(tc: TrainerConfig, self_parallel: bool = False):
    """Lightning's strategy for `tc`. `self_parallel`: the model parallelises itself and checkpoints its
    tensors through DCP (`save_sharded_checkpoint(checkpoint, dir)`), so every run (one rank too) gets
    a DDPStrategy that does not wrap it, writes that directory beside each .ckpt and removes it with
    the .ckpt (trainer.strategy=fsdp is refused)."""
    if self_parallel:
        if tc.strategy == "fsdp":
            raise ConfigError("trainer.strategy=fsdp: stage 2 shards its network itself; set trainer.strategy=auto "
                              "and model.parallel.data_parallel=fsdp2.")
        return _self_parallel_strategy()
    if tc.strategy == "fsdp":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.strategy=fsdp needs CUDA GPUs; on CPU use trainer.strategy=ddp (or auto).")
        return "fsdp"
    if tc.strategy == "ddp" or (tc.strategy == "auto" and tc.world_size > 1):
        # find_unused_parameters: frozen base weights never get grads; DDP only tracks trainable ones
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    return "auto"


def exp_manager_dict(ec: ExpManagerConfig) -> dict:
    return {
        # explicit_log_dir alone (NeMo logs an error when exp_dir is given too); name names checkpoints
        "exp_dir": None, "name": ec.name, "explicit_log_dir": str(Path(ec.exp_dir) / ec.name),
        "use_datetime_version": False, "resume_if_exists": ec.resume_if_exists,
        "resume_from_checkpoint": ec.resume_from_checkpoint or None,
        "resume_ignore_no_checkpoint": True, "create_tensorboard_logger": ec.create_tensorboard_logger,
        "create_checkpoint_callback": True, "create_preemption_callback": False,
        "log_step_timing": False, "log_tflops_per_sec_per_gpu": False, "seconds_to_sleep": 0,
        "checkpoint_callback_params": {
            "monitor": "step", "mode": "max", "save_top_k": ec.save_top_k, "save_last": True,
            "every_n_train_steps": ec.checkpoint_every_n_steps, "every_n_epochs": None,
            "filename": "{step}", "auto_insert_metric_name": True, "always_save_nemo": False,
            "save_nemo_on_train_end": ec.save_nemo_on_train_end, "save_on_train_epoch_end": False,
        },
    }


def build_trainer(cfg, callbacks=(), self_parallel: bool = False) -> tuple:
    """(lightning.pytorch.Trainer, log_dir) from `cfg.trainer` and `cfg.exp_manager`; `self_parallel`:
    see `resolve_strategy`."""
    import lightning.pytorch as pl
    from nemo.utils.exp_manager import exp_manager

    tc: TrainerConfig = cfg.trainer
    if cfg.exp_manager.resume_from_checkpoint and not Path(cfg.exp_manager.resume_from_checkpoint).is_file():
        raise ConfigError(f"exp_manager.resume_from_checkpoint={cfg.exp_manager.resume_from_checkpoint} is not a "
                          "file: give the path of a .ckpt.")
    trainer = pl.Trainer(
        accelerator="gpu" if tc.accelerator == "cuda" else tc.accelerator, devices=tc.devices,
        num_nodes=tc.num_nodes, strategy=resolve_strategy(tc, self_parallel), precision=resolve_precision(tc.precision),
        max_steps=tc.max_steps, max_epochs=-1, max_time=tc.max_time, val_check_interval=tc.val_check_interval,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=tc.log_every_n_steps,
        enable_progress_bar=tc.enable_progress_bar, deterministic=tc.deterministic,
        use_distributed_sampler=False, logger=False, enable_checkpointing=False, callbacks=list(callbacks),
    )
    log_dir = exp_manager(trainer, exp_manager_dict(cfg.exp_manager))
    return trainer, Path(log_dir)
