"""`llm2clip-nemo convert import-llm | export-llm | export-hf`."""
from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, verb_parser
from ..formats.contract import POOLING_MODES, TEXT_PREPARATIONS
from ..formats.hf_io import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = verb_parser("convert", description="Checkpoint conversion.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("import-llm", help="HF Llama/Mistral/Qwen2/Qwen3 dir or GGUF -> Megatron teacher dir (TP shards)")
    a.add_argument("--hf", required=True, help="HF model directory (causal LM, bare decoder, sharded, or a PEFT "
                   "LoRA adapter) or a .gguf file")
    a.add_argument("--base", action="append", default=[], metavar="DIR",
                   help="base model directory of a PEFT adapter (default: its base_model_name_or_path); repeat for "
                        "an adapter over an adapter (llm2vec: supervised, then MNTP), outermost first")
    a.add_argument("--out", required=True, help="output directory (must not exist)")
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel size; must divide heads and KV groups")
    g = a.add_argument_group("teacher contract", "how the teacher embeds captions; read from the source's "
                             "teacher_contract.json (or llm2vec_config.json) when it records them, else these "
                             "flags, else the defaults (a flag that disagrees with a recorded value is refused)")
    g.add_argument("--attention", choices=("bidirectional", "causal"), help="attention mask (default bidirectional)")
    g.add_argument("--pooling", choices=POOLING_MODES, help="pooling over the caption tokens (default mean)")
    g.add_argument("--max-length", type=int, help="tokens per caption sequence, template included (default 256)")
    g.add_argument("--text-preparation", choices=TEXT_PREPARATIONS,
                   help="plain, or llm2vec_llama3 for llm2vec-trained Llama-3 teachers such as LLM2CLIP's (default plain)")
    g.add_argument("--instruction", help="text before every caption, not pooled (default none)")
    g.add_argument("--doc-max-length", type=int, help="llm2vec_llama3: cut captions by words to this many tokens "
                   "first (llm2vec/LLM2CLIP: 400; default 0 = no cut)")
    b = sub.add_parser("export-llm", help="Megatron teacher dir -> HF causal-LM dir (stock transformers loads it)")
    b.add_argument("--megatron", required=True)
    b.add_argument("--out", required=True)
    c = sub.add_parser("export-hf", help="LLM2CLIP checkpoint -> HF dirs (vision, adapter, LLM)")
    c.add_argument("--model", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--teacher", help="the teacher LLM (Megatron or HF dir) when the recorded path has moved")
    c.add_argument("--weights", choices=("ema", "raw"), help="the EMA of the weights (model.ema.enabled runs) or the "
                   "trained weights (default: ema when the checkpoint has one, else raw)")
    return p


def contract_flags(args) -> dict:
    """import-llm's teacher-contract flags as contract fields (None = not given)."""
    attn = None if args.attention is None else args.attention == "bidirectional"
    return {"bidirectional": attn, "pooling": args.pooling, "max_length": args.max_length,
            "text_preparation": args.text_preparation, "instruction": args.instruction,
            "doc_max_length": args.doc_max_length}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "import-llm":
            from ..formats.contract import read_contract
            from ..formats.teacher_dir import read_teacher_meta
            from .llm import import_llm

            out = import_llm(args.hf, args.out, args.tp, bases=args.base, contract=contract_flags(args))
            meta = read_teacher_meta(out)
            merged = f", {len(meta['adapters'])} adapter(s) merged" if meta.get("adapters") else ""
            print(f"wrote Megatron teacher tp={meta['tp']} to {out} ({meta['spec']['family']}, {meta['hf_layout']} layout"
                  f"{merged}; weights sha256 {meta['weights_digest'][:16]}…)")
            print(f"teacher contract: {read_contract(out).describe()}")
        elif args.cmd == "export-llm":
            from .llm import export_llm

            print(f"wrote HF causal-LM directory {export_llm(args.megatron, args.out)}")
        else:
            from .hf_export import export_hf

            print(f"wrote Hugging Face export {export_hf(args.model, args.out, teacher_path=args.teacher, weights=args.weights)}")
    except (ConfigError, CheckpointError) as e:  # bad input: one line, exit 2
        print(f"llm2clip-nemo convert {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileExistsError, FileNotFoundError) as e:
        # bad input (unsupported model, missing base, wrong --tp, existing --out): one line, exit 2
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"llm2clip-nemo convert {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    return 0
