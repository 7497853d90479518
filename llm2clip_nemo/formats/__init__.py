"""Checkpoint formats and key maps: the layer below `text/` and `models/` (`.importlinter`).

    hf_io            loading HF Llama-family checkpoints and GGUF files, the embedded default LLM
    hf_layouts       the layouts a HF teacher comes in (causal, bare decoder, PEFT adapter)
    llama_spec       the Llama-family architecture read from a HF config
    llama_keymap     HF Llama <-> Megatron GPT key map with TP split/merge
    contract         teacher_contract.json: how a teacher embeds a caption
    teacher_dir      the Megatron teacher directory, reading a teacher at any TP, the fingerprint
    clip_vision      HF CLIP vision <-> our ViT key map
    siglip_vision    HF SigLIP vision <-> our ViT key map
    vision_checkpoint  picking the vision map, reading a HF vision dir, matching architectures

`convert/` is the CLI over it (import-llm, export-llm, export-hf).
"""
