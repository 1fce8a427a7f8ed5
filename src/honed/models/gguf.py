"""GGUF files -> a transformers folder of safetensors (or only the tokenizer), converted once and cached by
file content: the one GGUF cache, ``<cache>/gguf/<hash>-...``.

transformers dequantizes GGUF through the ``gguf`` package in about 20 s for a 135M model and rebuilds the
tokenizer from the GGUF vocabulary in seconds; doing that on every run would dominate small workflows.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from honed.util.hashing import hash_file
from honed.util.offline import local_only

log = logging.getLogger("honed")


def _key(gguf: Path) -> str:
    """The cache name of a GGUF file's conversions: its content hash and the converting transformers' version."""
    import transformers

    return hash_file(gguf)[:24] + f"-tf{transformers.__version__}"


def gguf_tokenizer_dir(gguf: Path, cache_dir: Path) -> Path:
    """Folder holding the tokenizer of ``gguf`` in transformers' format: a full conversion's folder when there
    is one (it holds the tokenizer), else the tokenizer alone, converted once."""
    import transformers

    root = cache_dir / "gguf"
    full = next((d for d in sorted(root.glob(_key(gguf) + "-*")) if (d / "tokenizer_config.json").is_file()), None)
    if full is not None:
        return full
    out = root / (_key(gguf) + ".tokenizer")
    if (out / "tokenizer_config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        with local_only():
            tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if not out.exists():
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def gguf_to_hf(gguf: Path, cache_dir: Path, dtype: str = "float32") -> Path:
    """Folder with config.json, model.safetensors and the tokenizer equivalent to ``gguf``."""
    import torch
    import transformers
    from filelock import FileLock

    key = _key(gguf) + f"-{dtype}"
    out = cache_dir / "gguf" / key
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"), local_only():  # a file on disk: no hub lookups
        if (out / "config.json").exists():
            return out
        log.info("converting %s to safetensors (once; cached in %s)", gguf.name, out)
        tmp = Path(tempfile.mkdtemp(prefix=key + ".", dir=out.parent))
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
            )
            # The weights are dequantized already; drop transformers' GGUF markers so it saves them.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tok.save_pretrained(tmp)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out
