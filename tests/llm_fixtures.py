"""Shared LLM fixtures: the embedded SmolLM2 as a HF directory, a tiny random Llama, captions."""
from __future__ import annotations

import json
import random

import torch

CAPTIONS = [
    "dog", "a red apple", "Grinning face", "two cats sleeping on a sofa",
    "A smiling face with heart-shaped eyes, from the group Smileys & Emotion, subgroup face-affection.",
    "rocket", "a bowl of steaming ramen noodles with a soft-boiled egg and spring onions",
    "the flag of Japan: a red disc on a white field", "thumbs up: medium skin tone",
    "Keywords: love, heart, eyes, smile, adore", "ok", "a man running a marathon in the rain",
    "Un chat noir assis sur le rebord de la fenêtre.", "ein kleiner Hund spielt im Park",
    "pizza slice with pepperoni", "a very long caption " + "that keeps going and going " * 8,
    "snowman without snow", "🙂", "trophy", "a woman astronaut floating in the space station",
    "A detailed photograph of an old lighthouse standing on rocky cliffs at sunset, waves crashing below.",
    "sun behind rain cloud", "a green book", "jack-o-lantern", "musical notes",
    "woman technologist: dark skin tone", "globe showing Europe-Africa", "hot beverage",
    "a child holding a balloon at a fair", "red heart", "fire", "face with tears of joy",
    "an emoji of a spouting whale, from the animal-marine subgroup of Animals & Nature",
    "crossed swords", "x",
]


def write_tiny_llama(path, vocab=101, hidden=64, layers=2, heads=4, kv_heads=2, ffn=96, tied=False, seed=0):
    """A random Llama checkpoint written by stock transformers (real HF directory)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=ffn, tie_word_embeddings=tied,
                      max_position_embeddings=128, rope_theta=10000.0, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: perturb so the norm mapping is actually tested
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    # a word-level tokenizer over a fixed vocabulary, so tokenization needs no download
    words = [f"w{i}" for i in range(vocab - 3)]
    vocab_map = {"<pad>": 0, "</s>": 1, "<s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="</s>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    fast.save_pretrained(path)
    return path


def random_word_captions(n, vocab=101, seed=0):
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab - 3)}" for _ in range(rng.randint(1, 12))) for _ in range(n)]


def read_json(p):
    return json.loads(p.read_text())


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def write_tiny_llama3(path, hidden=64, layers=2, heads=4, kv_heads=2, ffn=96, seed=0):
    """A random Llama checkpoint with a Llama-3-style tokenizer: byte-level BPE (trained here on
    'w<i>' words and an instruction), BOS prepended, <|start_header_id|>/<|end_header_id|>/<|eot_id|>
    as special tokens, no pad token (llm2vec pads with EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["user\n\n", "Given a caption, retrieve a detailed relevant caption"]
    corpus += [" ".join(f"w{i}" for i in range(j, j + 10)) for j in range(100)]
    tk.train_from_iterator(corpus, trainer)
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=ffn, max_position_embeddings=256,
                      rope_theta=500000.0, bos_token_id=bos, eos_token_id=tk.token_to_id("<|end_of_text|>"))
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
