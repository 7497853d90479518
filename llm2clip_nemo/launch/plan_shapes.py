"""The model shapes the capacity planner counts with: the vision tower's own `ViTConfig` (its counts are
`ViTConfig.num_params` / `forward_flops`, the ones a run uses), `TeacherShape`, published teacher presets,
and readers of config sections, presets and checkpoint directories into them."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..formats.contract import TeacherContract
from ..vision.config import PRESETS, ViTConfig

# Published shapes for `plan.teacher_preset`: hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size of each model's Hugging Face config.json
# (meta-llama/Meta-Llama-3-8B, meta-llama/Llama-3.1-8B, meta-llama/Llama-3.2-1B and -3B,
# meta-llama/Meta-Llama-3-70B, mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-7B, Qwen/Qwen3-8B (head_dim 128),
# HuggingFaceTB/SmolLM2-135M-Instruct). Qwen's QKV biases and QK norms are left out of the counts
# (< 0.01% of the parameters).
TEACHER_PRESETS: dict[str, dict[str, int]] = {
    "llama-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
    "llama-3.1-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
    "llama-3.2-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, vocab=128256),
    "llama-3.2-3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, ffn=8192, vocab=128256),
    "llama-3-70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, ffn=28672, vocab=128256),
    "mistral-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=32000),
    "qwen2.5-7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064),
    "qwen3-8b": dict(hidden=4096, layers=36, heads=32, kv_heads=8, ffn=12288, vocab=151936, head_dim=128),
    "smollm2-135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152),
}
EMBEDDED_PRESET = "smollm2-135m"
"""The shape of teacher.path='embedded' (the packaged SmolLM2-135M-Instruct)."""


@dataclass(frozen=True)
class TeacherShape:
    """The Llama teacher dimensions the counts need."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq_len: int = TeacherContract.max_length
    """Caption tokens per forward (padded length); default the teacher contract's max_length."""
    tensor_parallel: int = 1
    mode: str = "online"
    """'online' (teacher runs in the training step) or 'offline' (precomputed embedding sidecars)."""
    head_dim_override: int = 0
    """Attention head size when the config sets it apart from hidden / heads (Qwen3's head_dim); 0 = derived."""

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden // self.heads


_ALIASES = {
    "layers": ("layers", "num_layers", "num_hidden_layers"),
    "heads": ("heads", "num_heads", "num_attention_heads"),
    "kv_heads": ("kv_heads", "num_kv_heads", "num_key_value_heads", "num_query_groups"),
    "hidden": ("hidden", "hidden_size", "width"),
    "ffn": ("ffn", "ffn_hidden_size", "intermediate_size"),
    "vocab": ("vocab", "vocab_size"),
    "mlp_dim": ("mlp_dim", "intermediate_size"),
    "num_channels": ("num_channels", "channels"),
    "seq_len": ("seq_len", "max_length", "max_seq_len"),
    "tensor_parallel": ("tensor_parallel", "tp", "tensor_model_parallel_size"),
    "head_dim": ("head_dim", "kv_channels"),
}


def _as_dict(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    return dict(section)


def _pick(d: Mapping[str, Any], name: str, where: str, default: Any = None) -> Any:
    for key in _ALIASES.get(name, (name,)):
        if d.get(key) is not None:
            return d[key]
    if default is not None:
        return default
    raise ValueError(f"{where}.{name} is missing: set it (or {where}.preset) in the config or as {where}.{name}=N.")


def vision_shape(section: Any) -> ViTConfig:
    """The `ViTConfig` of a dict-like/dataclass section: a ViTConfig as is, or vision.{width, layers,
    heads, mlp_dim, patch_size, image_size[, channels, embed_dim, family]} (ViTConfig's and HF's names
    work too; `preset: L/14` fills them from vision.config.PRESETS). embed_dim absent: no projection (0);
    family='siglip': embed_dim = width (its pooled output is the embedding). ValueError naming the field."""
    if isinstance(section, ViTConfig):
        return section
    d = _as_dict(section)
    if d.get("preset"):
        if d["preset"] not in PRESETS:
            raise ValueError(f"vision.preset={d['preset']!r} is unknown: choose one of {sorted(PRESETS)}.")
        d = {**dataclasses.asdict(PRESETS[d["preset"]]), **{k: v for k, v in d.items() if k != "preset"}}
    width, family = int(_pick(d, "width", "vision")), str(d.get("family") or "clip")
    v = ViTConfig(family=family, width=width, num_layers=int(_pick(d, "layers", "vision")),
                  num_heads=int(_pick(d, "heads", "vision")), mlp_dim=int(_pick(d, "mlp_dim", "vision")),
                  patch_size=int(_pick(d, "patch_size", "vision")), image_size=int(_pick(d, "image_size", "vision")),
                  num_channels=int(_pick(d, "num_channels", "vision", 3)),
                  embed_dim=width if family == "siglip" else int(d.get("embed_dim") or 0))
    if v.image_size % v.patch_size and v.family != "siglip":  # SigLIP floors the patch grid
        raise ValueError(f"vision.image_size={v.image_size} is not a multiple of vision.patch_size={v.patch_size}.")
    return v


def preset_shape(name: str, where: str = "plan.teacher_preset") -> dict[str, int]:
    """The TEACHER_PRESETS entry `name`; ValueError naming `where` and the choices when unknown."""
    if name not in TEACHER_PRESETS:
        raise ValueError(f"{where}={name!r} is unknown: choose one of {', '.join(sorted(TEACHER_PRESETS))}.")
    return dict(TEACHER_PRESETS[name])


def checkpoint_shape(path: str) -> dict[str, Any] | None:
    """The HF config.json of a teacher checkpoint: a Megatron teacher dir (`convert import-llm`
    keeps the source's config in hf/) or a HF model dir; the embedded SmolLM2's preset; None if
    neither is readable here."""
    if path == "embedded":
        return dict(TEACHER_PRESETS[EMBEDDED_PRESET])
    for f in (Path(path) / "hf" / "config.json", Path(path) / "config.json"):
        if f.is_file():
            return json.loads(f.read_text())
    return None


def teacher_shape(section: Any) -> TeacherShape | None:
    """A TeacherShape from teacher.{hidden,layers,heads,kv_heads,ffn,vocab,seq_len,tensor_parallel,mode},
    `preset` (TEACHER_PRESETS) or `path` (a Hugging Face model dir with config.json). None when absent."""
    d = _as_dict(section)
    if not d:
        return None
    base: dict[str, Any] = {}
    if d.get("preset"):
        base = preset_shape(d["preset"], "teacher.preset")
    elif d.get("path"):
        base = checkpoint_shape(str(d["path"])) or {}
    d = {**base, **{k: v for k, v in d.items() if v is not None}}
    mode = str(d.get("mode", "online"))
    if mode not in ("online", "offline"):
        raise ValueError(f"teacher.mode={mode!r}: choose 'online' or 'offline'.")
    t = TeacherShape(hidden=int(_pick(d, "hidden", "teacher")), layers=int(_pick(d, "layers", "teacher")),
                     heads=int(_pick(d, "heads", "teacher")), kv_heads=int(_pick(d, "kv_heads", "teacher", d.get("heads"))),
                     ffn=int(_pick(d, "ffn", "teacher")), vocab=int(_pick(d, "vocab", "teacher")),
                     seq_len=int(_pick(d, "seq_len", "teacher", TeacherContract.max_length)),
                     tensor_parallel=int(_pick(d, "tensor_parallel", "teacher", 1)), mode=mode,
                     head_dim_override=int(d.get("head_dim") or d.get("kv_channels") or 0))
    for what, n in (("heads", t.heads), ("kv_heads", t.kv_heads)):
        if n % t.tensor_parallel:
            raise ValueError(f"teacher.tensor_parallel={t.tensor_parallel} does not divide teacher.{what}={n}.")
    return t
