"""The teacher's typed config, shared by the extract and CLIP-training recipes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..config.loader import ConfigError
from ..config.paths import config_path, field_path, set_config_path
from ..formats.contract import TeacherContract, check_pooling, contract_path, read_contract, resolve_contract

EMBEDDED = "embedded"


@dataclass
class TeacherConfig:
    CONFIG_PATH: ClassVar[str] = "teacher"
    """Path named in messages when built in Python; a recipe records its own (`config.paths`)."""

    path: str = EMBEDDED
    """Megatron teacher dir (`convert import-llm`), HF model dir, .gguf file, or 'embedded' (SmolLM2-135M-Instruct)."""
    tensor_parallel: int = 1
    """TP size t: the teacher is split over groups of t consecutive ranks; must divide heads and KV groups."""
    bidirectional: bool | None = None
    """Padding-only attention (LLM2CLIP/llm2vec); False keeps the causal mask. None: the teacher
    contract's (`formats.contract`); a value that disagrees with the contract is refused."""
    pooling: str | None = None
    """mean | last_token | weighted_mean (pad-aware). None: the teacher contract's."""
    max_length: int | None = None
    """Tokens per caption sequence (template included); longer captions are cut. None: the contract's."""
    text_preparation: str | None = None
    """plain | llm2vec_llama3 (see `text.preparation`). None: the teacher contract's."""
    batch_size: int = 64
    """Captions per teacher forward (length-bucketed)."""
    max_tokens: int = 0
    """If > 0, also caps padded tokens per forward (memory bound for long captions)."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16."""

    def validate(self) -> None:
        """Checks of the values alone (ValueError naming the field); the teacher's files are checked by
        `check_available` where a run starts."""
        if self.pooling is not None:
            check_pooling(self.pooling, field_path(self, "pooling"))
        if self.tensor_parallel < 1:
            raise ValueError(f"{field_path(self, 'tensor_parallel')}={self.tensor_parallel} must be >= 1.")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"{field_path(self, 'dtype')}={self.dtype!r} must be auto, fp32 or bf16.")

    def check_available(self) -> None:
        """Where a run starts: ConfigError if `path` does not exist or this config disagrees with the
        teacher's contract (`contract`), each naming the field and the fix."""
        if self.path != EMBEDDED and not Path(self.path).exists():
            raise ConfigError(f"{field_path(self, 'path')}={self.path!r} does not exist: point it at a Megatron teacher dir "
                              "(`llm2clip-nemo convert import-llm`), a HF model dir, or use 'embedded'.")
        self.contract()

    def resolved_path(self) -> Path:
        if self.path == EMBEDDED:
            from ..formats.hf_io import embedded_llm_dir

            return embedded_llm_dir()
        return Path(self.path)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.dtype]

    def contract(self) -> TeacherContract:
        """The teacher contract to embed with: the one recorded with the teacher, checked against the
        values this config sets (ConfigError naming the field on disagreement), or, for a teacher
        that records none, this config's values over the defaults."""
        requested = {"bidirectional": self.bidirectional, "pooling": self.pooling, "max_length": self.max_length,
                     "text_preparation": self.text_preparation}
        if self.path == EMBEDDED:  # the packaged raw SmolLM2 records no contract
            return resolve_contract(None, requested, EMBEDDED, prefix=field_path(self, ""))
        path = self.resolved_path()
        contract = resolve_contract(read_contract(path), requested, str(contract_path(path)),
                                    prefix=field_path(self, ""),
                                    fix=f"remove {field_path(self, '<field>')} from the config (teacher {self.path})")
        return set_config_path(contract, config_path(self))  # its run-time messages name this config's fields


def expected_fingerprint(cfg: TeacherConfig) -> str:
    """The fingerprint the configured teacher would stamp on sidecars, without building it."""
    from ..formats.teacher_dir import cached_digest, read_hf_checkpoint, read_teacher_meta, teacher_fingerprint

    path = cfg.resolved_path()
    if (path / "teacher.json").is_file():
        digest = read_teacher_meta(path)["weights_digest"]
    else:
        _, sd, _ = read_hf_checkpoint(path)
        digest = cached_digest(path, sd)
    return teacher_fingerprint(digest, cfg.contract())


def teacher_hidden_size(cfg: TeacherConfig) -> int:
    """The configured teacher's hidden size (its embedding size, the adapter's input), read from its
    files without loading the weights: `teacher.json` of a Megatron teacher dir, else `config.json`
    of a HF dir, else the GGUF header. OSError/KeyError when the teacher has none of them."""
    import json

    path = cfg.resolved_path()
    if (path / "teacher.json").is_file():
        return int(json.loads((path / "teacher.json").read_text())["spec"]["hidden_size"])
    from ..formats.hf_io import find_gguf

    d, gguf = find_gguf(Path(path))
    if gguf:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(d, gguf_file=gguf).hidden_size)
    return int(json.loads((d / "config.json").read_text())["hidden_size"])
