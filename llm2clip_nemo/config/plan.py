"""The capacity planner's knobs (`plan.*`), a section of the recipes `llm2clip-nemo plan` reads.

Only `llm2clip-nemo plan` uses it; training and extraction ignore it. It lives here, beside the
loader, so that recipe schemas can carry it without importing the planner.
"""
from __future__ import annotations

from dataclasses import dataclass

from .loader import ConfigError

H100_BF16_DENSE_TFLOPS = 989.0
"""Peak dense bf16 TFLOP/s of an H100 SXM (NVIDIA's data sheet: 1979 with sparsity)."""


@dataclass
class PlanConfig:
    gpus: int = 0
    """GPUs to plan for; 0 = trainer.num_nodes * trainer.devices (stage 2) or projection.gpus (extract)."""
    batch: int = 0
    """Global batch; 0 = model.global_batch_size, else model.train_ds.batch_size per GPU."""
    samples: float = 0.0
    """Samples seen by the run (wall time, storage); 0 = projection.samples (extract) or 1e9."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for throughput, in (0, 1]."""
    peak_tflops: float = H100_BF16_DENSE_TFLOPS
    """Peak dense TFLOP/s per GPU (default: H100 SXM bf16)."""
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
        if self.gpus < 0 or self.batch < 0 or self.samples < 0 or self.embedding_bytes < 0:
            raise ConfigError(f"plan.gpus={self.gpus}, plan.batch={self.batch}, plan.samples={self.samples} and "
                              f"plan.embedding_bytes={self.embedding_bytes} must be >= 0 (0 = from the recipe).")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"plan.mfu={self.mfu} must be in (0, 1].")
