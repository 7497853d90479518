"""The teacher contract: how a teacher LLM turns a caption into one vector, recorded once with it.

A caption-contrastive LLM embeds well only the way it was trained: the attention mask, the
pooling, the token budget and the text preparation around the caption. Those are written once,
next to the weights, as `teacher_contract.json`:

    stage 1 export (`caption-contrastive`)  -> <hf_merged>/teacher_contract.json
    `convert import-llm`                    -> <megatron>/hf/teacher_contract.json (read from the
                                               source, or from its flags, or defaults when neither)
    `convert export-llm` / `export-hf`      -> copied into the HF directory / <export>/llm/

and read by every path that embeds text: online training, extraction, evaluation, HF export and
`LLM2CLIP.from_pretrained`. A config may repeat a value; one that disagrees is refused
(`resolve_contract`), one left unset (None) takes the contract's. The teacher fingerprint hashes
the whole contract, so sidecars made with another preparation are refused.

Text preparations (`text_preparation`): plain, llm2vec_llama3; `text.preparation` implements them.
Pooling modes (`pooling`): `POOLING_MODES`; `text.pooling` implements them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..config import ConfigError
from ..config.paths import field_path, set_config_path

CONTRACT_FILE = "teacher_contract.json"
FORMAT = "llm2clip_nemo.teacher_contract/1"
TEXT_PREPARATIONS = ("plain", "llm2vec_llama3")
POOLING_MODES = ("mean", "last_token", "weighted_mean")


def check_pooling(mode: str, field: str = "pooling") -> str:
    """`mode` if it is one of POOLING_MODES; ValueError naming `field`, the value and the choices otherwise."""
    if mode not in POOLING_MODES:
        raise ValueError(f"{field}={mode!r} is not a pooling mode; choose one of {', '.join(POOLING_MODES)}.")
    return mode


@dataclass(frozen=True)
class TeacherContract:
    """How the teacher embeds a caption (the weights do not depend on these)."""

    CONFIG_PATH: ClassVar[str] = "teacher"
    """Where its messages name the fields: the teacher config's path (`resolve_contract` records the
    recipe's, e.g. model.teacher)."""

    bidirectional: bool = True
    """Padding-only attention (LLM2CLIP/llm2vec); False keeps the causal mask."""
    pooling: str = "mean"
    """mean | last_token | weighted_mean over the pooled tokens."""
    max_length: int = 256
    """Tokens per caption sequence, special tokens and template included; longer ones are cut."""
    text_preparation: str = "plain"
    """plain | llm2vec_llama3 (`text.preparation` implements them)."""
    instruction: str = ""
    """Text before every caption, never pooled ('' = none). Stage 1 puts its instruction on queries only."""
    pool_special_tokens: bool = False
    """plain only: pool the tokenizer's special prefix (BOS) too. Stage 1 pools caption tokens only."""
    doc_max_length: int = 0
    """llm2vec_llama3 only: captions over this many tokens are first cut by words (llm2vec's
    `_convert_to_str`; 400 in llm2vec and LLM2CLIP). 0 = no word cut."""

    def validate(self) -> TeacherContract:
        try:
            check_pooling(self.pooling, field_path(self, "pooling"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.text_preparation not in TEXT_PREPARATIONS:
            raise ConfigError(f"{field_path(self, 'text_preparation')}={self.text_preparation!r}: choose one of "
                              f"{', '.join(TEXT_PREPARATIONS)}.")
        if self.max_length < 2:
            raise ConfigError(f"{field_path(self, 'max_length')}={self.max_length} must be >= 2.")
        if self.doc_max_length < 0:
            raise ConfigError(f"{field_path(self, 'doc_max_length')}={self.doc_max_length} must be >= 0.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint_text(self) -> str:
        """Canonical text of every field, for the teacher fingerprint."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        """One line for logs and model cards."""
        attn = "bidirectional" if self.bidirectional else "causal"
        inst = f", instruction {self.instruction!r}" if self.instruction else ""
        return (f"{attn} attention, {self.pooling} pooling, max {self.max_length} tokens, "
                f"{self.text_preparation} text preparation{inst}")


FIELDS = tuple(f.name for f in dataclasses.fields(TeacherContract))


# ---- where it lives ------------------------------------------------------------------------------

def contract_path(teacher_path: str | Path) -> Path:
    """The contract file of a teacher: <megatron>/hf/ for a Megatron teacher dir, else beside the weights."""
    p = Path(teacher_path)
    if (p / "teacher.json").is_file():
        return p / "hf" / CONTRACT_FILE
    return (p.parent if p.is_file() else p) / CONTRACT_FILE


def write_contract(directory: str | Path, contract: TeacherContract, provenance: dict | None = None) -> Path:
    """Write `directory/teacher_contract.json` (fields + format + optional provenance)."""
    contract.validate()
    f = Path(directory) / CONTRACT_FILE
    body = {"format": FORMAT, **contract.to_dict()}
    if provenance:
        body["provenance"] = provenance
    f.write_text(json.dumps(body, indent=2) + "\n")
    return f


def read_contract(teacher_path: str | Path) -> TeacherContract | None:
    """The recorded contract of a teacher (HF dir, GGUF file or Megatron dir); None if it records none."""
    f = contract_path(teacher_path)
    if not f.is_file():
        return None
    body = json.loads(f.read_text())
    if body.get("format") != FORMAT:
        raise ConfigError(f"{f} has format {body.get('format')!r}, expected {FORMAT!r}: re-run "
                          "`llm2clip-nemo convert import-llm` with the teacher's settings.")
    unknown = sorted(set(body) - set(FIELDS) - {"format", "provenance"})
    if unknown:
        raise ConfigError(f"{f} has unknown fields {unknown}: it was written by a newer llm2clip_nemo.")
    return TeacherContract(**{k: body[k] for k in FIELDS if k in body}).validate()


def llm2vec_contract(directory: str | Path) -> dict:
    """Fields an llm2vec model directory records (llm2vec_config.json): pooling and max_length,
    bidirectional (llm2vec trains with the causal mask removed). {} when there is no such file."""
    f = Path(directory) / "llm2vec_config.json"
    if not f.is_file():
        return {}
    cfg = json.loads(f.read_text())
    pooling = {"mean": "mean", "weighted_mean": "weighted_mean", "last_token": "last_token",
               "eos_token": "last_token"}.get(cfg.get("pooling_mode", "mean"))
    if pooling is None:
        raise ConfigError(f"{f}: pooling_mode={cfg.get('pooling_mode')!r} has no equivalent here; "
                          "supported: mean, weighted_mean, last_token, eos_token.")
    out = {"bidirectional": True, "pooling": pooling}
    if "max_length" in cfg:
        out["max_length"] = int(cfg["max_length"])
    if "doc_max_length" in cfg:
        out["doc_max_length"] = int(cfg["doc_max_length"])
    return out


def resolve_contract(recorded: TeacherContract | None, requested: dict, where: str, prefix: str = "teacher.",
                     fix: str = "remove it from the config") -> TeacherContract:
    """The contract to run with: the recorded one, with the requested (non-None) values checked.

    recorded None: the requested values over the defaults. A requested value that differs from
    the recorded one raises ConfigError naming the field, both values, the file and the fix; `prefix`
    is the config's path with a trailing dot ('model.teacher.'), as every message names the fields.
    """
    unknown = sorted(set(requested) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown teacher contract fields {unknown}; known: {', '.join(FIELDS)}.")
    given = {k: v for k, v in requested.items() if v is not None}
    if recorded is None:
        return set_config_path(TeacherContract(**given), prefix.removesuffix(".")).validate()
    for k, v in given.items():
        have = getattr(recorded, k)
        if v != have:
            raise ConfigError(f"{prefix}{k}={v!r} disagrees with the teacher contract ({k}={have!r} in {where}): "
                              f"{fix} or set {prefix}{k}={have!r}.")
    return recorded


def contract_for_import(source: str | Path, requested: dict) -> tuple[TeacherContract, dict[str, str]]:
    """The contract `convert import-llm` writes for the checkpoint at `source`, and where each field
    came from ('recorded', 'llm2vec_config.json', 'flag' or 'default').

    A contract recorded with the source (stage 1 export, an earlier import) wins; llm2vec's
    llm2vec_config.json gives pooling and max_length; `requested` (flags, None = not given) fills
    the rest and must agree with what is recorded (ConfigError naming the flag otherwise)."""
    src = Path(source)
    recorded = read_contract(src)
    given = {k: v for k, v in requested.items() if v is not None}
    flag = {k: "--" + k.replace("_", "-") for k in FIELDS}
    if recorded is not None:
        contract = resolve_contract(recorded, requested, str(contract_path(src)), prefix="",
                                    fix="drop the flag")
        return contract, {k: "recorded" for k in FIELDS}
    l2v = llm2vec_contract(src.parent if src.is_file() else src)
    for k, v in given.items():
        if k in l2v and l2v[k] != v:
            raise ConfigError(f"{flag[k]} {v!r} disagrees with llm2vec_config.json in {src} ({k}={l2v[k]!r}): "
                              f"drop {flag[k]} or pass {flag[k]} {l2v[k]!r}.")
    fields = {**l2v, **given}
    origins = {k: "flag" if k in given else "llm2vec_config.json" if k in l2v else "default" for k in FIELDS}
    return TeacherContract(**fields).validate(), origins
