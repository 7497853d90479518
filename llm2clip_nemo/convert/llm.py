"""HF Llama-family checkpoint (any layout of `text.hf_layouts`, or GGUF) <-> Megatron teacher
directory, and loading the teacher at any TP.

Megatron teacher directory layout (written atomically: a temp dir renamed at the end):

    teacher.json              format version, LlamaSpec, tp, weights digest, source, hf_layout, adapters
    hf/                       the source's config.json, generation_config.json, tokenizer files
    mp_rank_00/model.safetensors ... mp_rank_{tp-1}/model.safetensors   (local-spec key names)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..text.contract import TeacherContract, contract_for_import, write_contract
from ..text.hf_io import CheckpointError, check_safetensors_file, find_gguf, load_hf_causal_lm
from ..text.hf_layouts import HFSource, from_canonical, read_hf_source
from ..text.llama_spec import LlamaSpec
from .llama_keymap import hf_to_megatron, megatron_to_hf, to_te_names

FORMAT = "llm2clip_nemo.teacher/1"
HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "vocab.json", "merges.txt")


# ---- reading a HF checkpoint ---------------------------------------------------------------------

def read_hf(path: str | os.PathLike, bases: list | None = None) -> tuple[LlamaSpec, HFSource]:
    """(spec, source) of any layout `text.hf_layouts` reads, or a GGUF file (through transformers).

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


# ---- import / export -----------------------------------------------------------------------------

def _atomic_dir(out: Path):
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new --out or remove it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))


def copy_side_files(src: HFSource, dest: Path) -> None:
    """The model's config and generation config; tokenizer files from the outermost directory that
    has them (an adapter's own tokenizer wins over its base's)."""
    for d in (src.model_dir, src.tokenizer_dir):
        for name in HF_SIDE_FILES:
            if (d / name).is_file() and not (d != src.model_dir and name == "config.json"):
                shutil.copy2(d / name, dest / name)


def export_merged_adapter(adapter_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A PEFT adapter directory -> a plain HF directory (the base's layout) with the LoRA merged."""
    spec, src = read_hf(adapter_dir)
    out = Path(out)
    tmp = _atomic_dir(out)
    try:
        save_file(from_canonical(src.sd, src.layout), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        copy_side_files(src, tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_llm(hf_path: str | os.PathLike, out: str | os.PathLike, tp: int = 1, bases: list | None = None,
               contract: dict | None = None) -> Path:
    """HF directory of any supported layout, or GGUF -> Megatron teacher directory split for `tp` ranks,
    with its teacher contract in hf/.

    `bases`: base model directories for a PEFT adapter (outermost first); see `read_hf_source`.
    `contract`: contract fields given by the caller (None = not given); `text.contract.contract_for_import`
    takes the one recorded with the source, else these over llm2vec_config.json and the defaults. A field
    that disagrees with the recorded one raises ConfigError before anything is read or written."""
    hf_path, out = Path(hf_path), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new --out or remove it.")
    teacher_contract, origins = contract_for_import(hf_path, contract or {})
    spec, src = read_hf(hf_path, bases)
    sd, cfg = src.sd, src.cfg
    shards = hf_to_megatron(sd, spec, tp)
    tmp = _atomic_dir(out)
    try:
        for r, shard in enumerate(shards):
            (tmp / f"mp_rank_{r:02d}").mkdir()
            save_file(shard, str(tmp / f"mp_rank_{r:02d}" / "model.safetensors"), metadata={"format": "pt"})
        side = tmp / "hf"
        side.mkdir()
        src_dir, gguf = find_gguf(hf_path)
        if gguf:  # no config/tokenizer files next to a GGUF: write them from the loaded objects
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf).save_pretrained(side)
            (side / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        else:
            copy_side_files(src, side)
        write_contract(side, teacher_contract, {"source": str(hf_path), "fields": origins})
        meta = {"format": FORMAT, "spec": spec.to_dict(), "tp": tp, "weights_digest": weights_digest(sd),
                "dtypes": sorted({str(t.dtype) for t in sd.values()}), "source": str(hf_path),
                "hf_layout": src.layout, "adapters": [str(a) for a in src.adapters]}
        (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_teacher_meta(path: str | os.PathLike) -> dict:
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
    meta = read_teacher_meta(path)
    shards = [load_file(Path(path) / f"mp_rank_{r:02d}" / "model.safetensors") for r in range(meta["tp"])]
    return LlamaSpec(**meta["spec"]), shards, meta


def export_llm(megatron_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Megatron teacher directory -> a HF directory in the source's layout (causal LM, or a bare
    decoder for a bare source) that stock transformers loads; adapters stay merged."""
    spec, shards, meta = read_megatron_shards(megatron_path)
    sd = from_canonical(megatron_to_hf(shards, spec), meta.get("hf_layout", "causal"))
    tmp = _atomic_dir(Path(out))
    try:
        side = Path(megatron_path) / "hf"
        for f in side.iterdir():
            shutil.copy2(f, tmp / f.name)
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(out)


# ---- loading the teacher -------------------------------------------------------------------------

def teacher_shard_for(path: str | os.PathLike, tp: int, tp_rank: int) -> tuple[LlamaSpec, dict, dict]:
    """This rank's shard for the requested TP size, re-sharding when the stored TP differs.

    A HF directory/GGUF is accepted too (converted in memory), so `teacher.path` may point at
    either; a stored TP equal to the requested one reads only this rank's file.
    """
    path = Path(path)
    if (path / "teacher.json").is_file():
        meta = read_teacher_meta(path)
        spec = LlamaSpec(**meta["spec"])
        spec.check_tp(tp, "teacher.tensor_parallel")
        if meta["tp"] == tp:
            return spec, load_file(path / f"mp_rank_{tp_rank:02d}" / "model.safetensors"), meta
        spec, shards, meta = read_megatron_shards(path)
        hf_sd = megatron_to_hf(shards, spec)
        return spec, hf_to_megatron(hf_sd, spec, tp)[tp_rank], meta
    spec, src = read_hf(path)
    hf_sd = src.sd
    spec.check_tp(tp, "teacher.tensor_parallel")
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
