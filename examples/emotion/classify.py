"""Classify the tone of a phrase with the int4 model the workflow built, as the seed's app.py does.

    python examples/emotion/classify.py "The lights went out and something moved upstairs"

This is plain onnxruntime-genai (og.Model -> og.Tokenizer -> og.Generator), run on honed's output
folder as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnxruntime_genai as og

TEMPLATE = "### Text: {phrase}\n### The tone is:\n"
TONES = ("joy", "sadness", "fear", "surprise")


def classify(model_dir: Path, phrase: str, max_new_tokens: int = 4) -> str:
    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    prompt = tokenizer.encode(TEMPLATE.format(phrase=phrase))
    params.set_search_options(max_length=len(prompt) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    text = tokenizer.decode(generator.get_sequence(0)[len(prompt):]).strip()
    return text.split()[0] if text else ""


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Classify a phrase as joy, sadness, fear or surprise.")
    parser.add_argument("phrase", nargs="+", help="The phrase to classify.")
    parser.add_argument("--model", type=Path, default=Path("models/emotion"),
                        help="Output folder of the workflow (default: models/emotion).")
    args = parser.parse_args()
    model_dir = args.model if args.model.exists() else here.parent.parent / args.model
    if not (model_dir / "genai_config.json").exists():
        print(f"error: no onnxruntime-genai model in {args.model}; run "
              "`honed run --config examples/emotion/workflow.json` first", file=sys.stderr)
        return 2
    tone = classify(model_dir, " ".join(args.phrase))
    print(tone if tone in TONES else f"{tone} (not one of {', '.join(TONES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
