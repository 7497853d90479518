"""Load a stage-2 `LLM2CLIPModel` from any layout it is saved in.

    model = load_llm2clip("runs/pretrain_tiny")            # a run directory
    model = load_llm2clip("model.nemo")                     # ModelPT.save_to archive
    model = load_llm2clip("checkpoints/step=100.ckpt")      # Lightning checkpoint
    model = load_llm2clip("export/")                        # `convert export-hf` output

Every layout is read the same way: the model config, then the weights, loaded through the ViT's
canonical key layout. That is why a `.nemo` is unpacked here rather than passed to
`ModelPT.restore_from`: a model trained with Transformer Engine layers (GPU) has other key names
than the local layers an evaluation machine (CPU) builds, and restore_from would refuse it.

Length (~330 lines): one reader per saved layout (run dir, .nemo, .ckpt with its DCP directory, HF
export) and their one-line errors, kept together so every verb (evaluate, export-hf, from_pretrained)
resolves a checkpoint by the same rules.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError
from ..data.config import StreamConfig
from ..text.adapter import AdapterConfig
from ..text.config import EMBEDDED, teacher_hidden_size

ACCEPTED = ("a .nemo archive, a Lightning .ckpt, a training run directory (model.nemo, or "
            "checkpoints/*last.ckpt), or a Hugging Face export directory (llm2clip.json from "
            "`llm2clip-nemo convert export-hf`)")
EXPORT_FORMAT = "llm2clip_nemo.hf_export/1"


class UnknownLayoutError(ValueError):
    """The path is none of the accepted checkpoint layouts; the message says what was found."""


@dataclass
class LoadInfo:
    """Where a loaded model came from (for reports and model cards)."""

    layout: str
    """'nemo', 'ckpt' or 'hf_export'."""
    path: str
    """The file or directory the weights were read from."""
    global_step: int | None = None
    """Optimizer steps trained, when the layout records it."""
    teacher_fingerprint: str | None = None
    """The teacher fingerprint the checkpoint recorded (None: not recorded)."""
    extra: dict = field(default_factory=dict)
    """Layout-specific provenance (e.g. the export's llm2clip.json)."""


def _describe(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist"
    if path.is_file():
        return f"{path} is a file with suffix {path.suffix!r}"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return f"{path} is a directory holding {names[:10] if names else 'nothing'}"


def find_checkpoint(path: str | Path) -> tuple[str, Path]:
    """(layout, file or dir to read) for `path`; UnknownLayoutError naming what was found."""
    path = Path(path)
    if path.is_file() and path.suffix == ".nemo":
        return "nemo", path
    if path.is_file() and path.suffix == ".ckpt":
        return "ckpt", path
    if path.is_dir():
        if (path / "llm2clip.json").is_file():
            return "hf_export", path
        if (path / "model.nemo").is_file():
            return "nemo", path / "model.nemo"
        last = _last_ckpt(path)
        if last is not None:
            return "ckpt", last
    raise UnknownLayoutError(f"unknown checkpoint layout: {_describe(path)}. Expected {ACCEPTED}.")


def _last_ckpt(run_dir: Path) -> Path | None:
    """The newest checkpoints/*last.ckpt of a run directory, None when there is none."""
    last = sorted((run_dir / "checkpoints").glob("*last.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    return max(last, key=lambda p: p.stat().st_mtime) if last else None


def _has_ema(ckpt_path: Path) -> bool:
    engine = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get("engine") or {}
    return engine.get("ema") is not None


# ---- reading config + weights per layout ------------------------------------------------------

def read_nemo(path: Path) -> tuple[dict, dict]:
    """(model config dict, state dict) of a `ModelPT.save_to` archive (model_config.yaml and
    model_weights.ckpt, read without unpacking to disk). UnknownLayoutError if either is missing."""
    with tarfile.open(path, "r:*") as tf:
        members = {m.name.removeprefix("./"): m for m in tf.getmembers() if m.isfile()}
        if "model_config.yaml" not in members or "model_weights.ckpt" not in members:
            raise UnknownLayoutError(f"unknown checkpoint layout: {path} is a .nemo archive without "
                                     f"model_config.yaml and model_weights.ckpt (holds {sorted(members)[:6]}).")
        cfg = OmegaConf.to_container(OmegaConf.create(tf.extractfile(members["model_config.yaml"]).read().decode()))
        import io

        sd = torch.load(io.BytesIO(tf.extractfile(members["model_weights.ckpt"]).read()), map_location="cpu",
                        weights_only=True)
    return cfg, sd


WEIGHTS = ("ema", "raw")


def read_ckpt(path: Path, weights: str | None = None) -> tuple[dict, dict, dict]:
    """(model config, `net.*` state dict, extra) of a stage-2 Lightning checkpoint, whose weights are in
    the training engine's payload (checkpoint["engine"]: "model" = trained weights, "ema" = their EMA).
    weights: "raw", "ema", or None = "ema" when the checkpoint has an EMA, else "raw"; extra["weights"]
    says which was read. ConfigError for "ema" on a checkpoint without EMA."""
    # Lightning pickles the OmegaConf hyper-parameters, which weights_only refuses: checkpoints are
    # trusted files written by our own runs (data shards, in contrast, are never unpickled).
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    engine = ckpt.get("engine") if isinstance(ckpt, dict) else None
    if not isinstance(engine, dict) or not ("model" in engine or "dcp" in engine) or "cfg" not in hp:
        raise UnknownLayoutError(f"unknown checkpoint layout: {path} is a .ckpt without state_dict (engine.model) and "
                                 f"hyper_parameters.cfg (keys {sorted(ckpt)[:8] if isinstance(ckpt, dict) else '?'}): "
                                 "not a stage-2 (pretrain/finetune) Lightning checkpoint.")
    cfg = hp["cfg"]
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    chosen = weights or ("ema" if engine.get("ema") is not None else "raw")
    if chosen not in WEIGHTS:
        raise ConfigError(f"weights={chosen!r}: choose {' or '.join(WEIGHTS)}.")
    if chosen == "ema" and engine.get("ema") is None:
        raise ConfigError(f"--weights ema but {path} has no EMA (trained with model.ema.enabled=false): "
                          "use --weights raw.")
    if "dcp" in engine:  # the tensors in the DCP directory beside the .ckpt, any layout and world size
        sd = _read_dcp(Path(path).parent / engine["dcp"], "ema" if chosen == "ema" else "model")
    else:
        sd = engine["ema"]["shadow"] if chosen == "ema" else engine["model"]
    extra = {"global_step": ckpt.get("global_step"), **ckpt.get("llm2clip", {}), "weights": chosen}
    return cfg, {f"net.{k}": v for k, v in sd.items()}, extra


def _read_dcp(directory: Path, key: str) -> dict[str, torch.Tensor]:
    """The full tensors of part `key` ("model" or "ema") of a training DCP checkpoint, in this process
    (`engine.checkpoint.read_full_state_dict`); UnknownLayoutError when it is missing or incomplete."""
    from ..engine.checkpoint import TrainingCheckpointError, read_full_state_dict

    try:
        sd = read_full_state_dict(directory, key)
    except TrainingCheckpointError as e:
        raise UnknownLayoutError(str(e)) from None
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _check_model_cfg(cfg: dict, path: Path) -> None:
    if not {"vision", "adapter", "teacher"} <= set(cfg):
        raise UnknownLayoutError(f"unknown checkpoint layout: {path} holds a model config with keys {sorted(cfg)[:8]}, "
                                 "not a stage-2 LLM2CLIP model (needs vision, adapter, teacher).")


def prepare_config(cfg: dict, tensor_parallel: int = 1, teacher_path: str | Path | None = None,
                   where: str | Path | None = None) -> dict:
    """A stored training config made loadable here: the requested TP, no training-only hardware
    switches (FP8, recompute), and optionally another teacher location. A recorded relative teacher
    path (runs before absolute paths were recorded) is tried against `where` (the checkpoint) and
    its parent directories; a teacher found nowhere raises ConfigError naming it and the fix."""
    cfg = {k: v for k, v in cfg.items() if k not in ("target", "nemo_version")}
    cfg["teacher"] = dict(cfg["teacher"], tensor_parallel=tensor_parallel)
    if teacher_path is not None:
        cfg["teacher"]["path"] = str(teacher_path)
    else:
        cfg["teacher"]["path"] = _locate_teacher(cfg["teacher"].get("path", EMBEDDED), where)
    # sizes and run fields that configs stored before they were derived (read again when built)
    cfg["adapter"] = {k: v for k, v in cfg["adapter"].items() if k not in AdapterConfig.DERIVED}
    cfg["train_ds"] = {k: v for k, v in cfg.get("train_ds", {}).items() if k not in StreamConfig.DERIVED}
    cfg["vision"] = dict(cfg["vision"], fp8=False, recompute=False)
    if cfg["vision"].get("transformer_impl") == "transformer_engine":
        cfg["vision"]["transformer_impl"] = "auto"  # the weights go through the canonical layout
    return cfg


def _locate_teacher(recorded: str, where: str | Path | None) -> str:
    if recorded == EMBEDDED or Path(recorded).exists():
        return recorded
    base = None
    if where is not None:
        base = Path(where).resolve()
        base = base if base.is_dir() else base.parent
        if not Path(recorded).is_absolute():
            for d in [base, *base.parents]:
                if (d / recorded).exists():
                    return str(d / recorded)
    raise ConfigError(f"the teacher this model was trained with, {recorded}, is not found"
                      + (f" (nor relative to {base} or its parent directories)" if base is not None else "")
                      + ": pass --teacher PATH (teacher_path=) pointing at that teacher LLM.")


def build_model(cfg: dict, groups=None, adapter_input: int | None = None):
    """An `LLM2CLIPModel` for the config dict, without data setup or finetune initialisation
    (the caller loads weights next). `adapter_input`: the trained adapter's input size (from its
    weights); ConfigError when it is not the teacher's hidden size."""
    from .llm2clip import LLM2CLIPModel
    from .nemo_base import allow_our_targets

    allow_our_targets()
    try:
        dc = OmegaConf.create(cfg)
        from .llm2clip import LLM2CLIPConfig
        from .nemo_base import from_dictconfig

        typed: LLM2CLIPConfig = from_dictconfig(LLM2CLIPConfig, dc)
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"the checkpoint's model config does not load here: {e}") from e
    hidden = teacher_hidden_size(typed.teacher)
    if adapter_input is not None and adapter_input != hidden:
        raise ConfigError(
            f"embedding dimension mismatch: the model's adapter takes {adapter_input}-dim teacher "
            f"embeddings but the teacher at {typed.teacher.path} has hidden size {hidden}: "
            "point teacher_path at the LLM the model was trained with.")
    # NeMo's restore flag: ModelPT skips data setup and LLM2CLIPModel skips the finetune init.
    LLM2CLIPModel._set_model_restore_state(is_being_restored=True)
    try:
        model = LLM2CLIPModel(dc, trainer=None, groups=groups)
    finally:
        LLM2CLIPModel._set_model_restore_state(is_being_restored=False)
    return model.eval()


def load_net_weights(model, sd: dict[str, torch.Tensor]) -> None:
    """Load a `net.*` state dict, vision keys through the canonical layout (any layer impl)."""
    from ..vision.specs import to_canonical_keys

    sd = {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}
    if not sd:
        raise UnknownLayoutError("unknown checkpoint layout: the state dict has no 'net.*' keys (not LLM2CLIPModel).")
    vision = {k.removeprefix("vision."): v for k, v in sd.items() if k.startswith("vision.")}
    # applies TE -> local renames only where TE names occur, so a local-layout dict passes unchanged
    model.net.vision.load_canonical_state_dict(to_canonical_keys(vision, "transformer_engine"))
    rest = {k: v for k, v in sd.items() if not k.startswith("vision.")}
    target = {k: v for k, v in model.net.state_dict().items() if not k.startswith("vision.")}
    missing, unexpected = sorted(set(target) - set(rest)), sorted(set(rest) - set(target))
    if missing or unexpected:
        raise KeyError(f"checkpoint does not fit the model: missing {missing[:6]}, unexpected {unexpected[:6]}.")
    model.net.load_state_dict({**model.net.state_dict(), **rest}, strict=True)


def _load_export(path: Path, tensor_parallel: int, teacher_path, groups):
    from safetensors.torch import load_file

    from ..formats.vision_checkpoint import vit_from_hf

    meta = json.loads((path / "llm2clip.json").read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise UnknownLayoutError(f"unknown checkpoint layout: {path / 'llm2clip.json'} has format "
                                 f"{meta.get('format')!r}, expected {EXPORT_FORMAT!r}.")
    cfg = prepare_config(meta["model_config"], tensor_parallel, teacher_path or path / meta["llm"])
    adapter_cfg = json.loads((path / meta["adapter"] / "config.json").read_text())
    model = build_model(cfg, groups, adapter_cfg.get("input_dim"))
    _, vision_sd = vit_from_hf(path / meta["vision"], require_projection=True)
    model.net.vision.load_canonical_state_dict(vision_sd)
    ad = load_file(path / meta["adapter"] / "model.safetensors")
    model.net.adapter.load_state_dict({k.removeprefix("adapter."): v for k, v in ad.items()
                                       if k.startswith("adapter.")}, strict=True)
    model.net.loss.load_state_dict({k.removeprefix("loss."): v for k, v in ad.items() if k.startswith("loss.")},
                                   strict=True)
    info = LoadInfo("hf_export", str(path), meta.get("training", {}).get("global_step"),
                    adapter_cfg.get("teacher_fingerprint"), {"llm2clip.json": meta})
    return model, info


def check_teacher_fingerprint(model, recorded: str | None) -> None:
    """Raise ConfigError if the configured teacher is not the one the checkpoint recorded
    (its embeddings would be silently different from those the adapter was trained on)."""
    from ..text.config import expected_fingerprint

    if recorded is None:
        return
    have = expected_fingerprint(model.typed.teacher)
    if have != recorded:
        raise ConfigError(f"teacher mismatch: the checkpoint was trained against teacher fingerprint {recorded}, but "
                          f"the teacher at {model.typed.teacher.path} gives {have}: pass teacher_path (--teacher-path) "
                          "of the original teacher.")


def load_llm2clip(path: str | Path, *, tensor_parallel: int = 1, teacher_path: str | Path | None = None,
                  groups=None, verify_teacher: bool = True, weights: str | None = None):
    """An eval-mode `LLM2CLIPModel` from any accepted layout (see module doc); `model.load_info`
    says where it came from. `teacher_path` replaces the recorded teacher location (e.g. after
    moving files); `tensor_parallel` is the teacher TP to run with (not the one trained with).
    verify_teacher: compare the teacher's fingerprint with the one the layout recorded (.ckpt and
    exports record one; hashing the LLM weights costs ~1 s per GB).
    weights: "ema" (the EMA of a run trained with model.ema.enabled), "raw" (the trained weights), or
    None = "ema" when the layout has one. A .nemo archive holds the raw weights only: a run directory
    whose last checkpoint has an EMA is read from that checkpoint unless weights="raw".
    Raises UnknownLayoutError for anything else, ConfigError when the teacher does not fit or
    weights="ema" names a layout without EMA."""
    from ..runtime import init_parallel

    layout, where = find_checkpoint(path)
    if layout == "nemo" and weights != "raw" and Path(path).is_dir():
        last = _last_ckpt(Path(path))
        if last is not None and (weights == "ema" or _has_ema(last)):
            layout, where = "ckpt", last
    if layout != "ckpt" and weights == "ema":
        raise ConfigError(f"--weights ema but {where} is a {'.nemo archive' if layout == 'nemo' else 'Hugging Face export'}, "
                          "which holds one set of weights: pass the run's checkpoints/*last.ckpt (or --weights raw).")
    groups = groups or init_parallel(tensor_parallel, field="tensor_parallel")
    if layout == "hf_export":
        model, info = _load_export(where, tensor_parallel, teacher_path, groups)
    else:
        if layout == "nemo":
            cfg, sd = read_nemo(where)
            extra = {"weights": "raw"}
        else:
            cfg, sd, extra = read_ckpt(where, weights)
        _check_model_cfg(cfg, where)
        proj = sd.get("net.adapter.proj.weight")
        model = build_model(prepare_config(cfg, tensor_parallel, teacher_path, where), groups,
                            None if proj is None else int(proj.shape[1]))
        load_net_weights(model, sd)
        step = extra.get("global_step")
        if step is None and where.name == "model.nemo" and (where.parent / "result.json").is_file():
            step = json.loads((where.parent / "result.json").read_text()).get("global_step")
        info = LoadInfo(layout, str(where), step, extra.get("teacher_fingerprint"), {"weights": extra["weights"]})
    if verify_teacher:
        check_teacher_fingerprint(model, info.teacher_fingerprint)
    model.load_info = info
    return model.eval()
