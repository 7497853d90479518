"""The Megatron teacher directory and reading a teacher at any TP: the format below `text/` and
`models/` (`convert import-llm` writes it, `text.teacher` loads it).

Megatron teacher directory layout (written atomically by `convert.llm.import_llm`):

    teacher.json              format version, LlamaSpec, tp, weights digest, source, hf_layout, adapters
    hf/                       the source's config.json, generation_config.json, tokenizer files and
                              teacher_contract.json (`formats.contract`)
    mp_rank_00/model.safetensors ... mp_rank_{tp-1}/model.safetensors   (local-spec key names)

The teacher fingerprint (`teacher_fingerprint`) names the embeddings a teacher produces: sha256 of
the weights digest (`weights_digest`: HF names, dtypes, shapes, bytes) and the whole teacher contract.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from .contract import TeacherContract
from .hf_io import CheckpointError, check_safetensors_file, find_gguf, load_hf_causal_lm
from .hf_layouts import HFSource, read_hf_source
from .llama_keymap import hf_to_megatron, megatron_to_hf, to_te_names
from .llama_spec import LlamaSpec

FORMAT = "llm2clip_nemo.teacher/1"


# ---- reading a HF checkpoint ---------------------------------------------------------------------

def read_hf(path: str | os.PathLike, bases: list | None = None) -> tuple[LlamaSpec, HFSource]:
    """(spec, source) of any layout `formats.hf_layouts` reads, or a GGUF file (through transformers).

    The source's state dict has causal-LM keys and the stored bytes (adapters merged)."""
    path = Path(path)
    directory, gguf = find_gguf(path)
    if gguf:
        model, _ = load_hf_causal_lm(path)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        src = HFSource(sd, model.config.to_dict(), "causal", directory)
    else:
        src = read_hf_source(directory, bases)
    spec = LlamaSpec.from_hf_config(src.cfg)
    if spec.tie_word_embeddings:
        src.sd.pop("lm_head.weight", None)
    return spec, src


def read_hf_checkpoint(path: str | os.PathLike, bases: list | None = None) -> tuple[LlamaSpec, dict[str, torch.Tensor], dict]:
    """(spec, full state dict with causal-LM keys and the stored bytes, config dict)."""
    spec, src = read_hf(path, bases)
    return spec, src.sd, src.cfg


_DIGESTS: dict[tuple, str] = {}


def cached_digest(path: Path, hf_sd: dict[str, torch.Tensor]) -> str:
    """weights_digest of a checkpoint on disk, remembered per (path, size, mtime) in this process."""
    files = sorted(p for p in Path(path).parent.glob("*") if p.suffix in (".safetensors", ".gguf")) if path.is_file() \
        else sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.gguf"))
    key = (str(Path(path).resolve()),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        _DIGESTS[key] = weights_digest(hf_sd)
    return _DIGESTS[key]


def weights_digest(hf_sd: dict[str, torch.Tensor]) -> str:
    """sha256 over HF names, dtypes, shapes and bytes: the same for a HF dir and its Megatron copy."""
    h = hashlib.sha256()
    for k in sorted(hf_sd):
        t = hf_sd[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def teacher_fingerprint(digest: str, contract: TeacherContract) -> str:
    """Identifies the embeddings a teacher produces: weights + the whole teacher contract
    (attention mode, pooling, max_length, text preparation)."""
    return hashlib.sha256(f"{digest}|{contract.fingerprint_text()}".encode()).hexdigest()[:24]


# ---- the teacher directory ----------------------------------------------------------------------

def read_teacher_meta(path: str | os.PathLike) -> dict:
    """teacher.json of a Megatron teacher directory, after checking that every shard file is there and
    readable. Raises CheckpointError naming the missing file, the unknown format or the truncated shard."""
    path = Path(path)
    f = path / "teacher.json"
    if not f.is_file():
        raise CheckpointError(f"{path} has no teacher.json: not a Megatron teacher directory "
                              "(make one with `llm2clip-nemo convert import-llm`).")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{f} has format {meta.get('format')!r}, expected {FORMAT!r}: unknown checkpoint layout.")
    for r in range(meta["tp"]):
        shard = path / f"mp_rank_{r:02d}" / "model.safetensors"
        if not shard.is_file():
            raise CheckpointError(f"{shard} is missing: the teacher was written for tp={meta['tp']}; "
                                  "re-run `convert import-llm`.")
        check_safetensors_file(shard)
    return meta


def read_megatron_shards(path: str | os.PathLike) -> tuple[LlamaSpec, list[dict[str, torch.Tensor]], dict]:
    """(spec, every rank's local-spec state dict in rank order, teacher.json) of a Megatron teacher directory."""
    meta = read_teacher_meta(path)
    shards = [load_file(Path(path) / f"mp_rank_{r:02d}" / "model.safetensors") for r in range(meta["tp"])]
    return LlamaSpec(**meta["spec"]), shards, meta


# ---- loading the teacher -------------------------------------------------------------------------

def teacher_shard_for(path: str | os.PathLike, tp: int, tp_rank: int,
                      tp_field: str = "teacher.tensor_parallel") -> tuple[LlamaSpec, dict, dict]:
    """This rank's shard for the requested TP size, re-sharding when the stored TP differs.

    A HF directory/GGUF is accepted too (converted in memory), so `teacher.path` may point at
    either; a stored TP equal to the requested one reads only this rank's file. A TP that does not
    divide the heads is refused naming `tp_field`, the TP size's config path.
    """
    path = Path(path)
    if (path / "teacher.json").is_file():
        meta = read_teacher_meta(path)
        spec = LlamaSpec(**meta["spec"])
        spec.check_tp(tp, tp_field)
        if meta["tp"] == tp:
            return spec, load_file(path / f"mp_rank_{tp_rank:02d}" / "model.safetensors"), meta
        spec, shards, meta = read_megatron_shards(path)
        hf_sd = megatron_to_hf(shards, spec)
        return spec, hf_to_megatron(hf_sd, spec, tp)[tp_rank], meta
    spec, src = read_hf(path)
    hf_sd = src.sd
    spec.check_tp(tp, tp_field)
    meta = {"weights_digest": cached_digest(path, hf_sd), "source": str(path), "tp": None,
            "tokenizer_dir": str(src.tokenizer_dir)}
    return spec, hf_to_megatron(hf_sd, spec, tp)[tp_rank], meta


def load_teacher_weights(encoder, shard: dict[str, torch.Tensor]) -> None:
    """Load a local-spec shard into an encoder of either spec; every weight must be used."""
    if encoder.use_te:
        shard = to_te_names(shard)
    shard = {k: v for k, v in shard.items() if not k.startswith("output_layer.")}
    target = encoder.state_dict()
    dtype = encoder.options.params_dtype
    missing = [k for k in target if k not in shard and not k.endswith("_extra_state")]
    unexpected = [k for k in shard if k not in target]
    if missing or unexpected:
        raise CheckpointError(f"teacher weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    with torch.no_grad():
        for k, v in shard.items():
            if target[k].shape != v.shape:
                raise CheckpointError(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(target[k].shape)}.")
            target[k].copy_(v.to(dtype))
