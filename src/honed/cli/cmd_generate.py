"""``honed generate`` and ``honed chat``: stream text from a genai folder, an ONNX causal LM or
an HF folder, and print the decode rate at the end."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from honed.errors import UserError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="genai folder, ONNX causal LM (folder or .onnx) or HF folder")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument(
        "--template", default=None,
        help="'chat' for the tokenizer's chat template, or a format string with {prompt}",
    )


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser(
        "generate", help="Generate text from a model (genai, ONNX or Hugging Face folder).",
        epilog='example: honed generate --model out/model --prompt "### Text: I won!\\n### The tone is:\\n" '
        "--max-new-tokens 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(gen)
    gen.add_argument("--prompt", "-p", required=True, help="prompt text")
    gen.set_defaults(func=generate_command)

    chat = subparsers.add_parser(
        "chat", help="Chat with a model interactively (empty line or Ctrl-D quits).",
        epilog="example: honed chat --model out/model --template chat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(chat)
    chat.set_defaults(func=chat_command)


def _check(args: argparse.Namespace) -> None:
    if args.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")


def _print_rate(gen: Any) -> None:
    s = gen.stats
    print(
        f"\n[{s.new_tokens} tokens, prompt {s.prompt_tokens} tokens in {s.prefill_s * 1000:.0f} ms, "
        f"{s.tokens_per_s:.1f} tokens/s, {gen.kind}]",
        file=sys.stderr,
    )


def _stream(gen: Any, text: str, max_new_tokens: int) -> str:
    pieces = []
    for piece in gen.stream(text, max_new_tokens):
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    return "".join(pieces)


def generate_command(args: argparse.Namespace) -> int:
    from honed.models.runtime import load_generator

    _check(args)
    gen = load_generator(args.model)
    _stream(gen, gen.format_prompt(args.prompt, args.template), args.max_new_tokens)
    sys.stdout.write("\n")
    _print_rate(gen)
    return 0


def chat_command(args: argparse.Namespace) -> int:
    from honed.models.runtime import load_generator

    _check(args)
    gen = load_generator(args.model)
    template = args.template
    if template is None and getattr(gen.tokenizer, "chat_template", None):
        template = "chat"
    history: list[dict[str, str]] = []
    print(f"chatting with {args.model} ({gen.kind}); an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except EOFError:
            break
        if not user.strip():
            break
        text = gen.format_prompt(user, template, history)
        reply = _stream(gen, text, args.max_new_tokens)
        sys.stdout.write("\n")
        _print_rate(gen)
        if template == "chat":
            history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return 0
