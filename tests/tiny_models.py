"""Tiny random models with a real trained tokenizer, built once per test session.

They have the real architectures (Llama, Phi-3, BERT) so every code path runs, and they
are small enough (<1 MB) that a training step takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Text the tokenizer learns from; written here so tests depend on no outside data.
CORPUS = [
    "### Text: I passed the exam with top marks\n### The tone is:\njoy",
    "### Text: The lights went out and something moved upstairs\n### The tone is:\nfear",
    "### Text: My old dog died this morning\n### The tone is:\nsadness",
    "### Text: They threw me a party I knew nothing about\n### The tone is:\nsurprise",
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun",
    "numbers one two three four five six seven eight nine ten",
] * 20

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"]


def build_tokenizer(out: Path, vocab_size: int = 256):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(out)
    return fast


def build_causal_lm(out: Path, arch: str = "llama", seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random Llama or Phi-3 causal LM with its tokenizer into ``out``; ``overrides`` replace config
    fields (e.g. num_hidden_layers, tie_word_embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    cfg = (Phi3Config(**common, original_max_position_embeddings=256) if arch == "phi3"
           else LlamaConfig(**common))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_bert_classifier(out: Path, num_labels: int = 4, seed: int = 0) -> Path:
    """Save a tiny random BERT sequence classifier with a WordPiece tokenizer into ``out``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(out)
    cfg = BertConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).save_pretrained(out, safe_serialization=True)
    return out
