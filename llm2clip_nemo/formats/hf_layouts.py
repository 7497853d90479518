"""The on-disk layouts a Hugging Face teacher comes in, read into one canonical state dict.

    causal   a `*ForCausalLM` directory: keys `model.layers.N...`, `model.embed_tokens`, `lm_head`
             (one `model.safetensors`, or shards listed in `model.safetensors.index.json`)
    bare     a decoder saved alone (`LlamaModel`; llm2vec / LLM2CLIP teachers, often with
             `architectures: [LlamaEncoderModel]` and an `auto_map` to remote code): keys
             `layers.N...`, `embed_tokens`, `norm`, no `lm_head`
    adapter  a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`) over a base
             directory of any layout here, itself possibly an adapter (llm2vec: an MNTP adapter over
             the LLM, then a supervised adapter over the MNTP-merged model)

Canonical keys are the causal-LM ones. The family comes from `model_type`; an `auto_map` is
noted and ignored: remote code is never run.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .hf_io import CheckpointError, check_hf_dir

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LAYOUTS = ("causal", "bare")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class HFSource:
    """A HF checkpoint read into canonical (causal-LM) keys."""

    sd: dict[str, torch.Tensor]
    """Canonical state dict, stored dtypes (LoRA deltas merged)."""
    cfg: dict
    """The model's config.json (the base's, for an adapter)."""
    layout: str
    """'causal' | 'bare': how the model weights were stored (the base's, for an adapter)."""
    model_dir: Path
    """Directory holding config.json."""
    adapters: list[Path] = field(default_factory=list)
    """Adapter directories merged, outermost first."""

    @property
    def tokenizer_dir(self) -> Path:
        """The outermost directory that ships tokenizer files (adapters often do)."""
        for d in [*self.adapters, self.model_dir]:
            if any((d / f).is_file() for f in TOKENIZER_FILES):
                return d
        return self.model_dir


def is_adapter_dir(path: Path) -> bool:
    """A PEFT adapter directory: adapter_config.json and no full model weights next to it."""
    if not (path / ADAPTER_CONFIG).is_file():
        return False
    return not any(f.name != ADAPTER_WEIGHTS for f in path.glob("*.safetensors"))


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files holding the model: those the index lists, else every *.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return [directory / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(f for f in directory.glob("*.safetensors") if f.name != ADAPTER_WEIGHTS)


def to_canonical(sd: dict[str, torch.Tensor], where: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict with causal-LM keys, layout). Raises CheckpointError for keys of neither layout."""
    if any(k.startswith("model.layers.") or k == "model.embed_tokens.weight" for k in sd):
        return sd, "causal"
    if any(k.startswith("layers.") or k == "embed_tokens.weight" for k in sd):
        return {f"model.{k}": v for k, v in sd.items()}, "bare"
    raise CheckpointError(f"{where}: keys {sorted(sd)[:3]} are neither a causal LM's (model.layers.N...) nor a bare "
                          "decoder's (layers.N...); pass a Hugging Face Llama-family model directory.")


def from_canonical(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Canonical keys -> the keys of `layout` (bare: no `model.` prefix, no lm_head)."""
    if layout == "causal":
        return dict(sd)
    if layout == "bare":
        return {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def note_auto_map(cfg: dict, directory: Path) -> None:
    if cfg.get("auto_map"):
        log.warning("%s/config.json names remote code in auto_map %s: ignored (remote code is never run); the model "
                    "is built as model_type=%r.", directory, sorted(cfg["auto_map"]), cfg.get("model_type"))


def read_model_dir(directory: Path) -> HFSource:
    """A causal or bare model directory (one file or an index of shards)."""
    from .llama_spec import LlamaSpec

    if (directory / "config.json").is_file():  # an unsupported architecture is the first thing to say
        LlamaSpec.from_hf_config(json.loads((directory / "config.json").read_text()))
    check_hf_dir(directory)
    cfg = json.loads((directory / "config.json").read_text())
    note_auto_map(cfg, directory)
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        sd.update(load_file(f))
    sd, layout = to_canonical(sd, directory)
    return HFSource(sd, cfg, layout, directory)


def resolve_base(adapter_dir: Path, bases: list[Path]) -> tuple[Path, list[Path]]:
    """(base directory of this adapter, bases left for deeper adapters). An explicit `--base` wins."""
    if bases:
        base, rest = Path(bases[0]), list(bases[1:])
        if not base.is_dir():
            raise CheckpointError(f"--base {base} is not a directory: pass the base model's local directory.")
        return base, rest
    acfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    name = acfg.get("base_model_name_or_path")
    for cand in ([Path(name), adapter_dir / name] if name else []):
        if cand.is_dir():
            return cand, []
    raise CheckpointError(f"{adapter_dir} is a PEFT adapter over base_model_name_or_path={name!r}, which is not a local "
                          "directory: download the base model and pass it with --base DIR.")


def lora_deltas(adapter_dir: Path, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{canonical weight key: delta} of a LoRA adapter: (B @ A) * alpha / r, as peft merges it
    (`LoraLayer.get_delta_weight`; alpha / sqrt(r) with rslora). Deltas are fp32."""
    acfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    where = adapter_dir / ADAPTER_CONFIG
    if acfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{where}: peft_type={acfg.get('peft_type')!r} is not supported; only LORA adapters merge.")
    for key in ("use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern"):
        if acfg.get(key):
            raise CheckpointError(f"{where}: {key}={acfg[key]!r} is not supported; merge the adapter with peft "
                                  "(merge_and_unload) and import the merged model.")
    r, alpha = int(acfg["r"]), float(acfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
    f = adapter_dir / ADAPTER_WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"{adapter_dir} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}: re-download the adapter.")
    from .hf_io import check_safetensors_file

    check_safetensors_file(f)
    raw = load_file(f)
    prefix = "base_model.model."
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in raw.items():
        if not k.startswith(prefix) or ".lora_" not in k:
            raise CheckpointError(f"{f}: key {k!r} is not a LoRA A/B weight; only plain LoRA adapters are supported.")
        module, part = k[len(prefix):].rsplit(".lora_", 1)
        pairs.setdefault(module, {})[part.split(".")[0]] = v
    bare = not any(m.startswith("model.") for m in pairs)  # an adapter trained on a bare decoder
    deltas = {}
    for module, ab in pairs.items():
        key = ("model." if bare else "") + module + ".weight"
        if set(ab) != {"A", "B"} or key not in sd:
            raise CheckpointError(f"{f}: LoRA weights for {module!r} do not fit the base model (parts {sorted(ab)}, "
                                  f"base has {key}: {key in sd}); pass the adapter's own base with --base.")
        deltas[key] = (ab["B"].float() @ ab["A"].float()) * scale
    return deltas


def read_hf_source(path: Path, bases: list[Path] | None = None) -> HFSource:
    """Any layout above -> canonical keys; adapters merged into the base in the base's dtype.

    `bases`: explicit base directories, outermost adapter's first (`import-llm --base`); without
    them each adapter's `base_model_name_or_path` must be a local directory. Raises CheckpointError.
    """
    path = Path(path)
    if not is_adapter_dir(path):
        if bases:
            raise CheckpointError(f"--base {bases[0]} is left over: {path} is not a PEFT adapter directory (no "
                                  f"{ADAPTER_CONFIG}); pass one --base per adapter, outermost first.")
        return read_model_dir(path)
    base, rest = resolve_base(path, list(bases or []))
    src = read_hf_source(base, rest)
    for key, delta in lora_deltas(path, src.sd).items():
        w = src.sd[key]
        src.sd[key] = w + delta.to(w.dtype)  # peft's merge: the delta cast to the weight's dtype, then added
    src.adapters.insert(0, path)
    return src
