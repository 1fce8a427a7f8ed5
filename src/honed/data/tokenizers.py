"""Tokenizers for data work without loading a model: folders, GGUF files (converted once, in the GGUF cache of
``honed.models.gguf``), package files (``pkg://``, resolved by ``honed.models.resolve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.gguf import gguf_tokenizer_dir
from honed.models.loaders import load_tokenizer_dir
from honed.models.resolve import PKG_SCHEME, package_file
from honed.util.offline import local_only


def load_tokenizer_from(path: str, *, cache_dir: Path | None = None, trust_remote_code: bool = False) -> Any:
    """A tokenizer from a model folder, a .gguf file (cached conversion) or a ``pkg://`` file."""
    from transformers import AutoTokenizer

    p = package_file(path) if path.startswith(PKG_SCHEME) else Path(path).expanduser()
    if p.is_dir() and not (p / "tokenizer_config.json").exists() and not (p / "tokenizer.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            p = ggufs[0]
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"tokenizer file not found: {p}; fix the path")
        if cache_dir is None:
            with local_only():
                return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        return load_tokenizer_dir(gguf_tokenizer_dir(p, cache_dir))
    if not p.exists():
        raise UserError(f"tokenizer not found: '{path}' is neither a folder nor a .gguf file; fix the path")
    return load_tokenizer_dir(p, trust_remote_code=trust_remote_code)
