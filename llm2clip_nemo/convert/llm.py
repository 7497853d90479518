"""`convert import-llm | export-llm`: HF Llama-family checkpoint (any layout of `formats.hf_layouts`,
or GGUF) <-> Megatron teacher directory (`formats.teacher_dir` describes and reads it).

Every directory is written atomically: a temp dir renamed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from ..formats.contract import contract_for_import, write_contract
from ..formats.hf_io import find_gguf
from ..formats.hf_layouts import HFSource, from_canonical
from ..formats.llama_keymap import hf_to_megatron, megatron_to_hf
from ..formats.teacher_dir import FORMAT, read_hf, read_megatron_shards, weights_digest

HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "vocab.json", "merges.txt")


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
    `contract`: contract fields given by the caller (None = not given); `formats.contract.contract_for_import`
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
