"""Tiny random checkpoints of every supported family and layout, written by transformers itself.

Families: llama (plain RoPE), llama3 (rope_type llama3), mistral (explicit head_dim != hidden/heads,
sliding_window set), qwen2 (q/k/v biases), qwen3 (per-head q/k RMSNorm, explicit head_dim).
Layouts: causal (`*ForCausalLM.save_pretrained`), sharded (same, split with an index), bare (the
decoder saved alone, as llm2vec/LLM2CLIP publish: `LlamaEncoderModel` + auto_map), adapter (a peft
LoRA adapter over a bare base, as llm2vec's supervised stage).
Each family ships a tokenizer of its own kind (transformers 5.24 picks the class from model_type).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

QK_SCALE = 8.0
FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")
LAYOUTS = ("causal", "sharded", "bare", "adapter")
WORD_VOCAB = 101  # Llama/Mistral: a word-level tokenizer over w0..w97
BYTE_VOCAB = 257  # Qwen: byte-level BPE alphabet + <|endoftext|>
# Llama-3.2's factors with a 64-token original context (theirs: 8192), so captions of ~300 tokens
# reach the rescaled frequency bands: with 8192, skipping the scaling changed nothing measurable here.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0}


def _config(family: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=512, tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(vocab_size=WORD_VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2, **common)
    if family == "llama3":
        return LlamaConfig(vocab_size=WORD_VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                           rope_parameters=dict(LLAMA3_ROPE), **common)
    if family == "llama_linear":  # linear RoPE scaling (position interpolation), outside FAMILIES
        return LlamaConfig(vocab_size=WORD_VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                           rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}, **common)
    if family == "mistral":  # head_dim 32 != 64 / 4
        return MistralConfig(vocab_size=WORD_VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2, head_dim=32,
                             sliding_window=4096, **common)
    byte = dict(vocab_size=BYTE_VOCAB + 2, pad_token_id=BYTE_VOCAB - 1, eos_token_id=BYTE_VOCAB - 1, bos_token_id=None)
    if family == "qwen2":
        return Qwen2Config(**byte, **common)
    if family == "qwen3":
        return Qwen3Config(head_dim=32, **byte, **common)
    raise KeyError(family)


def model_type(family: str) -> str:
    return "llama" if family.startswith("llama") else family


def _tokenizer(family: str):
    if model_type(family) in ("qwen2", "qwen3"):
        from tokenizers import pre_tokenizers
        from transformers import Qwen2Tokenizer

        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {ch: i for i, ch in enumerate(alphabet)}
        vocab["<|endoftext|>"] = len(alphabet)
        return Qwen2Tokenizer(vocab=vocab, merges=[])
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i + 3 for i in range(WORD_VOCAB - 3)}
    tk = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "</s>": 1, "<s>": 2, **words}, unk_token="</s>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


def causal_model(family: str, seed: int = 0):
    """A random *ForCausalLM with norms and biases perturbed (so their mapping is tested) and q/k
    scaled up: at init (std 0.02) attention is near-uniform and position-blind, so a wrong RoPE
    would go unnoticed; sharper attention makes positions (and their scaling) matter."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if n.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(QK_SCALE)
    return model


def write_family(path, family: str, layout: str = "causal", seed: int = 0) -> Path:
    """Write a tiny checkpoint; for layout 'adapter' the base goes to `path`/../`name`-base."""
    path = Path(path)
    model, tok = causal_model(family, seed), _tokenizer(family)
    if layout == "causal":
        model.save_pretrained(path)
    elif layout == "sharded":
        model.save_pretrained(path, max_shard_size="40KB")
        assert (path / "model.safetensors.index.json").is_file()
    elif layout == "bare":
        save_bare(model, path)
    elif layout == "adapter":
        base = path.parent / f"{path.name}-base"
        save_bare(model, base)
        tok.save_pretrained(base)
        write_lora(base, path, seed=seed + 1)
    else:
        raise KeyError(layout)
    tok.save_pretrained(path)
    return path


def save_bare(model, path: Path) -> None:
    """The decoder alone, with the config llm2vec-style teachers ship (remote-code class + auto_map)."""
    model.model.save_pretrained(path)
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    arch = {"llama": "LlamaEncoderModel", "mistral": "MistralEncoderModel"}.get(cfg["model_type"], "EncoderModel")
    cfg["architectures"] = [arch]
    cfg["auto_map"] = {"AutoModel": f"modeling_encoder.{arch}"}
    cfg_file.write_text(json.dumps(cfg, indent=2))


def load_reference(path: Path, layout: str):
    """transformers' own model for a checkpoint of `layout` (adapters merged by peft)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if layout == "adapter":
        from peft import PeftModel

        base = load_reference(path.parent / f"{path.name}-base", "bare")
        return PeftModel.from_pretrained(base, path).merge_and_unload().eval()
    if layout == "bare":
        cfg = AutoConfig.from_pretrained(path)
        cfg.auto_map = {}  # never run remote code
        return AutoModel.from_pretrained(path, config=cfg).eval()
    return AutoModelForCausalLM.from_pretrained(path).eval()


def write_lora(base: Path, out: Path, seed: int = 1, r: int = 4, alpha: int = 8) -> Path:
    """A LoRA adapter (all seven projections, non-zero B) over the bare decoder in `base`."""
    from peft import LoraConfig, get_peft_model

    model = load_reference(base, "bare")
    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    return out


def captions(family: str, n_tokens: int, count: int, seed: int = 0) -> list[str]:
    """`count` captions of about `n_tokens` tokens each (the tokenizers above: 1 token per word / byte)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = max(1, n_tokens + rng.randint(-n_tokens // 5, n_tokens // 5))
        if model_type(family) in ("qwen2", "qwen3"):
            out.append("".join(rng.choice("abcdefghij klmnop") for _ in range(n)).strip() or "a")
        else:
            out.append(" ".join(f"w{rng.randrange(WORD_VOCAB - 3)}" for _ in range(n)))
    return out
