"""Stage 1's trainable caption encoder in plain torch: HF causal LM + peft LoRA, bidirectional
attention, pooling without instruction tokens, the caption InfoNCE and the MNTP objective.

Kept free of NeMo/Lightning so parity tests (DP=2 vs DP=1) and exports run without them; the
NeMo model class (`caption_contrastive.py`) wraps it.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..config.paths import field_path
from ..formats.contract import check_pooling
from ..losses import CaptionInfoNCELoss
from ..text.hf_encoder import HFEncoder, set_bidirectional

EMBEDDED = "embedded"
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    CONFIG_PATH: ClassVar[str] = "model.lora"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Leaf module names to adapt: q_proj ... down_proj (the same names in Llama, Mistral, Qwen2 and Qwen3)."""
    top_layers: int = 0
    """Adapt only the last N decoder layers (0 = all). The backward then stops at the lowest adapted
    layer: on 2 CPU cores, N=8 of SmolLM2's 30 layers took a stage-1 step from 7.2 s to 4.0 s."""

    def validate(self) -> None:
        if self.top_layers < 0:
            raise ConfigError(f"{field_path(self, 'top_layers')}={self.top_layers} must be >= 0 (0 = every layer).")
        if self.r < 1:
            raise ConfigError(f"{field_path(self, 'r')}={self.r} must be >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{field_path(self, 'dropout')}={self.dropout} must be in [0, 1).")
        if not self.target_modules:
            raise ConfigError(f"{field_path(self, 'target_modules')} is empty: name at least one module, e.g. [q_proj, v_proj].")


@dataclass
class MNTPConfig:
    CONFIG_PATH: ClassVar[str] = "model.mntp"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    steps: int = 0
    """Optimizer steps of masked next-token prediction before the contrastive phase (0 = skip)."""
    mask_prob: float = 0.2
    """Fraction of caption tokens selected for prediction (80% masked, 10% random, 10% kept)."""
    mask_token: str = "_"
    """Token that replaces masked tokens when the tokenizer has no mask token (llm2vec uses "_")."""

    def validate(self) -> None:
        if self.steps < 0 or not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"{field_path(self, 'steps')}={self.steps} must be >= 0 and {field_path(self, 'mask_prob')}={self.mask_prob} in (0, 1).")


@dataclass
class EncoderConfig:
    """The LLM and how it embeds captions."""

    CONFIG_PATH: ClassVar[str] = "model"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    llm_path: str = EMBEDDED
    """HF causal-LM directory or .gguf file; 'embedded' = the packaged SmolLM2-135M-Instruct."""
    pooling: str = "mean"
    """mean | last_token | weighted_mean over caption tokens (instruction tokens excluded)."""
    bidirectional: bool = True
    """Remove the causal mask (LLM2CLIP / llm2vec)."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16."""
    gradient_checkpointing: bool = False
    """Recompute decoder layers in the backward (saves activation memory on long sequences)."""
    loss_scale: float = 50.0
    """Inverse temperature of the caption InfoNCE (50 = LLM2CLIP; llm2vec uses 20)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    mntp: MNTPConfig = field(default_factory=MNTPConfig)

    def validate(self) -> None:
        try:
            check_pooling(self.pooling, field_path(self, "pooling"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"{field_path(self, 'dtype')}={self.dtype!r}: choose auto, float32 or bfloat16.")
        if self.loss_scale <= 0:
            raise ConfigError(f"{field_path(self, 'loss_scale')}={self.loss_scale} must be > 0.")


def resolve_llm_path(path: str) -> Path:
    if path == EMBEDDED:
        from ..formats.hf_io import embedded_llm_dir

        return embedded_llm_dir()
    return Path(path)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Raise ConfigError naming the missing targets and the linear modules the model has."""
    linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise ConfigError(f"model.lora.target_modules: {missing} not found in {type(model).__name__}; "
                          f"available linear modules: {linear_names}. Fix the names in model.lora.target_modules.")


def adapted_layers(model: nn.Module, top_layers: int) -> dict:
    """peft LoraConfig arguments restricting LoRA to the last `top_layers` decoder layers ({} = all)."""
    if not top_layers:
        return {}
    n = getattr(model.config, "num_hidden_layers", None)
    if n is None:
        raise ConfigError(f"model.lora.top_layers={top_layers}: {type(model).__name__} does not say how many "
                          "decoder layers it has (config.num_hidden_layers); set model.lora.top_layers=0.")
    if top_layers > n:
        raise ConfigError(f"model.lora.top_layers={top_layers} but the model has {n} decoder layers: use at most "
                          f"{n} (or 0 for all).")
    return {"layers_to_transform": list(range(n - top_layers, n)), "layers_pattern": "layers"}


class CaptionEncoder(nn.Module):
    """LoRA-adapted LLM encoder: `embed(ids, mask, pool_mask) -> [N, H]`, `contrastive_loss`, `mntp_loss`."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        from ..formats.hf_io import load_hf_causal_lm

        self.cfg = cfg
        base, tok = load_hf_causal_lm(resolve_llm_path(cfg.llm_path), dtype=resolve_dtype(cfg.dtype))
        check_lora_targets(base, list(cfg.lora.target_modules))
        if cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), bias="none",
                          **adapted_layers(base, cfg.lora.top_layers))
        self.tokenizer = tok
        self.encoder = HFEncoder(get_peft_model(base, lcfg), tok, cfg.pooling, cfg.bidirectional)
        self.loss_fn = CaptionInfoNCELoss(cfg.loss_scale)
        self.encoder.model.train()

    @property
    def peft_model(self):
        return self.encoder.model

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def embed(self, input_ids, attention_mask, pool_mask=None) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask, pool_mask)

    def contrastive_loss(self, batch: dict, group=None) -> torch.Tensor:
        """Batch from `collate_triples`: rows = B queries, B positives, B*H negatives (one forward)."""
        n, h = int(batch["n"]), int(batch["h"])
        emb = self.embed(batch["input_ids"], batch["attention_mask"], batch["pool_mask"])
        q, p, neg = emb[:n], emb[n:2 * n], emb[2 * n:]
        return self.loss_fn(q, p, neg.reshape(n, h, -1) if h else None, group=group)

    def mask_token_id(self) -> int:
        tok = self.tokenizer
        if tok.mask_token_id is not None:
            return tok.mask_token_id
        ids = tok(self.cfg.mntp.mask_token, add_special_tokens=False)["input_ids"]
        return ids[0] if ids else tok.pad_token_id

    def mntp_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masked next-token prediction (llm2vec): corrupt caption tokens, predict token i from the
        logits at position i-1 with bidirectional attention. Only pooled (caption) tokens from
        position 1 on are candidates: position 0 has no previous position to predict it from."""
        ids, attn = batch["input_ids"], batch["attention_mask"]
        cand = batch["pool_mask"].bool().clone()
        cand[:, 0] = False
        probs = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
        selected = cand & (probs < self.cfg.mntp.mask_prob)
        if not bool(selected.any()):  # tiny batches: always predict at least one token
            first = cand.float().argmax(dim=1)
            selected[torch.arange(ids.shape[0]), first] = cand[torch.arange(ids.shape[0]), first]
        action = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
        corrupted = ids.clone()
        corrupted[selected & (action < 0.8)] = self.mask_token_id()
        rand_tok = torch.randint(0, self.peft_model.config.vocab_size if hasattr(self.peft_model, "config") else 1,
                                 ids.shape, generator=generator).to(ids.device)
        swap = selected & (action >= 0.8) & (action < 0.9)
        corrupted[swap] = rand_tok[swap]
        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        logits = self.peft_model(input_ids=corrupted, attention_mask=attn, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100)


def merged_copy(enc: CaptionEncoder) -> nn.Module:
    """A plain HF causal LM with the LoRA weights folded in (the encoder itself is untouched)."""
    merged = copy.deepcopy(enc.peft_model).merge_and_unload()
    set_bidirectional(merged, False)  # a standard causal-LM config; the teacher chooses the mask
    if getattr(merged, "is_gradient_checkpointing", False):
        merged.gradient_checkpointing_disable()
    merged.config.use_cache = True
    return merged.eval()


def export_merged(enc: CaptionEncoder, out_dir: str | Path, max_length: int, extra_meta: dict | None = None) -> Path:
    """Write the LoRA-merged LLM as a stock HF causal-LM directory (safetensors + tokenizer) with its
    teacher contract (`formats.contract`): the attention mode, pooling, token budget and the plain text
    preparation stage 1 trained with (BOS prefix not pooled), so every later path embeds the same way."""
    from ..formats.contract import TeacherContract, write_contract

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = merged_copy(enc)
    merged.save_pretrained(out, safe_serialization=True)
    enc.tokenizer.save_pretrained(out)
    contract = TeacherContract(bidirectional=enc.cfg.bidirectional, pooling=enc.cfg.pooling, max_length=max_length,
                               text_preparation="plain", pool_special_tokens=False)
    write_contract(out, contract, {"trained_by": "caption-contrastive", "lora": asdict(enc.cfg.lora),
                                   "source": str(enc.cfg.llm_path), **(extra_meta or {})})
    return out
