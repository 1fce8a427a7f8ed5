"""Validate the emotion classification example dataset.

The dataset is JSON Lines (one object per line) despite its ``.json`` name. Each row must have
exactly the fields ``phrase`` and ``tone``. The checks are:

- every line parses as a JSON object with exactly ``phrase`` (a non-empty string of 4-20 words)
  and ``tone`` (one of the allowed tones);
- at least ``MIN_ROWS`` rows, and every tone has ``TARGET_PER_TONE`` +- ``TOLERANCE`` rows;
- no exact duplicate phrases (compared case-insensitively, ignoring surrounding whitespace);
- no first three words (lower-cased, punctuation stripped) shared by more than
  ``MAX_SHARED_PREFIX`` rows.

Usage: ``python check_dataset.py [PATH]`` (defaults to ``dataset-classification.json`` next to this
script). Prints a summary and exits 1 on any violation.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ALLOWED_TONES: tuple[str, ...] = ("joy", "sadness", "fear", "surprise")
MIN_ROWS = 880
TARGET_PER_TONE = 220
TOLERANCE = 15
MIN_WORDS = 4
MAX_WORDS = 20
MAX_SHARED_PREFIX = 3
DEFAULT_PATH = Path(__file__).with_name("dataset-classification.json")

_WORD_RE = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` with punctuation stripped."""
    return _WORD_RE.findall(text.lower().replace("\u2019", "'"))


def load_rows(path: Path, errors: list[str]) -> list[tuple[int, str, str]]:
    """Parse the file into ``(line_number, phrase, tone)`` tuples, recording format errors."""
    rows: list[tuple[int, str, str]] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                errors.append(f"line {lineno}: empty line")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"line {lineno}: invalid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                errors.append(f"line {lineno}: not a JSON object")
                continue
            if set(obj) != {"phrase", "tone"}:
                errors.append(f"line {lineno}: fields must be exactly phrase and tone, got {sorted(obj)}")
                continue
            phrase, tone = obj["phrase"], obj["tone"]
            if not isinstance(phrase, str) or not phrase.strip():
                errors.append(f"line {lineno}: phrase must be a non-empty string")
                continue
            if tone not in ALLOWED_TONES:
                errors.append(f"line {lineno}: tone {tone!r} not in {list(ALLOWED_TONES)}")
                continue
            n_words = len(words(phrase))
            if not MIN_WORDS <= n_words <= MAX_WORDS:
                errors.append(f"line {lineno}: {n_words} words, expected {MIN_WORDS}-{MAX_WORDS}")
            rows.append((lineno, phrase, tone))
    return rows


def check(path: Path) -> int:
    """Run all checks on ``path``, print a summary and return the exit status."""
    if not path.is_file():
        print(f"error: {path} not found")
        return 1
    errors: list[str] = []
    rows = load_rows(path, errors)

    counts = Counter(tone for _, _, tone in rows)
    if len(rows) < MIN_ROWS:
        errors.append(f"only {len(rows)} valid rows, expected at least {MIN_ROWS}")
    for tone in ALLOWED_TONES:
        if abs(counts[tone] - TARGET_PER_TONE) > TOLERANCE:
            errors.append(f"tone {tone!r} has {counts[tone]} rows, expected {TARGET_PER_TONE} +- {TOLERANCE}")

    seen: dict[str, int] = {}
    for lineno, phrase, _ in rows:
        key = " ".join(phrase.lower().split())
        if key in seen:
            errors.append(f"line {lineno}: duplicate of line {seen[key]}: {phrase!r}")
        else:
            seen[key] = lineno

    prefixes: defaultdict[str, list[int]] = defaultdict(list)
    for lineno, phrase, _ in rows:
        prefixes[" ".join(words(phrase)[:3])].append(lineno)
    for prefix, lines in sorted(prefixes.items()):
        if len(lines) > MAX_SHARED_PREFIX:
            errors.append(
                f"first three words {prefix!r} used {len(lines)} times (max {MAX_SHARED_PREFIX}): lines {lines}"
            )

    lengths = [len(words(phrase)) for _, phrase, _ in rows]
    print(f"file: {path}")
    print(f"rows: {len(rows)}")
    for tone in ALLOWED_TONES:
        print(f"  {tone:<9} {counts[tone]}")
    if lengths:
        print(
            f"words per phrase: min {min(lengths)}, max {max(lengths)}, mean {sum(lengths) / len(lengths):.1f}"
        )
    print(
        f"distinct first-three-word prefixes: {len(prefixes)} (most used: {max(map(len, prefixes.values()), default=0)})"
    )

    if errors:
        print(f"FAILED: {len(errors)} violation(s)")
        for err in errors:
            print(f"  - {err}")
        return 1
    print("OK: all checks passed")
    return 0


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_PATH
    return check(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
