"""llama.cpp (llama-cpp-python) decode speed worker: runs in its own venv, driven by bench/run.py.

    bench/.work/llamacpp-venv/bin/python bench/llamacpp.py --gguf F --threads 2 < commands

Loads the GGUF once, then for each line read from stdin ("<new_tokens>") generates greedily from the
prompt (given with --prompt) and prints one JSON line: time to first token, decode tokens/s (tokens
after the first over the time they took, as honed's GenerationStats counts them), tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", required=True)
    a = ap.parse_args()
    from llama_cpp import Llama, __version__

    llm = Llama(model_path=a.gguf, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False,
                seed=0)
    ids = llm.tokenize(a.prompt.encode(), add_bos=False, special=True)
    print(json.dumps({"ready": True, "version": __version__, "prompt_tokens": len(ids)}), flush=True)
    for line in sys.stdin:
        new_tokens = int(line.strip() or 32)
        llm.reset()
        start = time.perf_counter()
        first = last = None
        n = 0
        for _tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
            if n >= new_tokens:
                break
        print(json.dumps({"ttft_ms": 1000 * (first - start), "decode_tokens_per_s": (n - 1) / (last - first),
                          "new_tokens": n}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
