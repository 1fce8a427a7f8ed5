"""GGUF files -> a transformers folder of safetensors, converted once and cached by file content.

transformers dequantizes GGUF through the ``gguf`` package in about 20 s for a 135M model; doing that
on every run would dominate small workflows, so the result is stored under ``<cache>/gguf/<hash>``.
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


def gguf_to_hf(gguf: Path, cache_dir: Path, dtype: str = "float32") -> Path:
    """Folder with config.json, model.safetensors and the tokenizer equivalent to ``gguf``."""
    import torch
    import transformers
    from filelock import FileLock

    key = hash_file(gguf)[:24] + f"-{dtype}-tf{transformers.__version__}"
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
