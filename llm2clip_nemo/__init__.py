"""llm2clip_nemo: LLM2CLIP (an LLM as the frozen text teacher of CLIP) on Megatron/NeMo.

`from llm2clip_nemo import LLM2CLIP` gives the inference class for exported models; it is
imported on first use, so `import llm2clip_nemo` stays light (no torch/transformers at import).
"""


def __getattr__(name):
    if name == "LLM2CLIP":
        from .hf_model import LLM2CLIP

        return LLM2CLIP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LLM2CLIP"]
