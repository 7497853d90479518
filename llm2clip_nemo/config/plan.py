"""The capacity planner's knobs (`plan.*`), a section of the recipes `llm2clip-nemo plan` reads.

Only `llm2clip-nemo plan` uses it; training and extraction ignore it. It lives here, beside the
loader, so that recipe schemas can carry it without importing the planner.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .loader import ConfigError
from .paths import field_path

DEFAULT_SAMPLES = 1e9
"""Samples a stage-2 run is planned for when plan.samples is 0."""


@dataclass
class PlanConfig:
    CONFIG_PATH: ClassVar[str] = "plan"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    gpus: int = 0
    """GPUs to plan for; 0 = trainer.num_nodes * trainer.devices (stage 2) or projection.gpus (extract)."""
    batch: int = 0
    """Global batch; 0 = model.global_batch_size, else model.train_ds.batch_size per GPU."""
    samples: float = 0.0
    """Samples seen by the run (wall time, storage); 0 = projection.samples (extract) or DEFAULT_SAMPLES (1e9)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for throughput, in (0, 1]."""
    gpu: str = "H100"
    """GPU to plan for: a name of `runtime.flops.GPU_PEAKS` (the peak table a run's MFU is measured against:
    H200, H100 NVL, H100 PCIe, H100 (SXM), A100); its dense bf16 peak is the planner's peak."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s per GPU; 0 = plan.gpu's bf16 entry of `runtime.flops.GPU_PEAKS`."""
    teacher_preset: str = ""
    """Teacher shape to plan with (a name of launch.plan.TEACHER_PRESETS); '' = read it from teacher.path
    (a Megatron teacher dir's hf/config.json, a HF dir's config.json, or the embedded SmolLM2). Its tensor
    parallelism and max_length still come from the teacher section."""
    fused_attention: bool = True
    """Flash/fused attention (no s^2 attention-score activations kept)."""
    distributed_optimizer: bool = False
    """Shard AdamW states over the data-parallel ranks."""
    embedding_bytes: float = 0.0
    """Bytes per stored embedding value; 0 = from data.storage_dtype (extract: int8 -> 1, else 2) or 2."""

    def validate(self) -> None:
        if (self.gpus < 0 or self.batch < 0 or self.samples < 0 or self.embedding_bytes < 0
                or self.peak_tflops < 0):
            raise ConfigError(f"{field_path(self, 'gpus')}={self.gpus}, {field_path(self, 'batch')}={self.batch}, {field_path(self, 'samples')}={self.samples}, "
                              f"{field_path(self, 'embedding_bytes')}={self.embedding_bytes} and {field_path(self, 'peak_tflops')}={self.peak_tflops} "
                              f"must be >= 0 (0 = from the recipe, or {field_path(self, 'gpu')}'s peak).")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"{field_path(self, 'mfu')}={self.mfu} must be in (0, 1].")
