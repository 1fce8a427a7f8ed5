"""honed's CPU policy (``honed.util.cpus``): usable CPUs, the shared flag, and where they are applied.

Each test names the one-line fault it catches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from honed.util import cpus

SPIN = "session.intra_op.allow_spinning"


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4-CPU machine, all 4 in the affinity mask, 4 physical cores, no policy switch, no share."""
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(cpus, "affinity_count", lambda: 4)
    monkeypatch.setattr(cpus, "_physical_cores", lambda: 4)
    monkeypatch.delenv(cpus.POLICY_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "_runnable_now", lambda: None)  # the test's load1 is the only load
    cpus.set_share(None)


def _budget(shared: bool, threads: int = 1) -> cpus.CpuBudget:
    return cpus.CpuBudget(usable=threads, threads=threads, shared=shared, machine=2, reason="test")


@pytest.mark.parametrize(("files", "want"), [
    ({}, 4),                                                             # no cgroup files: the affinity
    ({"cpu.max": "max 100000"}, 4),                                      # v2, no quota
    ({"cpu.max": "150000 100000"}, 2),                                   # 1.5 CPUs: ceil
    ({"cpu.max": "50000 100000"}, 1),                                    # half a CPU: at least 1
    ({"cpu.max": "800000 100000"}, 4),                                   # quota above the affinity
    ({"cpu.cfs_quota_us": "250000", "cpu.cfs_period_us": "100000"}, 3),  # v1
    ({"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"}, 4),      # v1, no quota
    ({"cpu.max": "garbage"}, 4),                                         # unreadable: ignored
])
def test_usable_cpus_from_affinity_and_cgroup(machine: None, tmp_path: Path, files: dict[str, str],
                                               want: int) -> None:
    """Fault caught: ``math.ceil`` replaced by ``int`` (floor) gives 1 for 1.5 CPUs and 0→1 for 0.5 only by
    luck; dropping the cgroup cap gives 4 for "150000 100000"; reading v1's quota without the period gives
    250000."""
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    assert cpus.usable_cpus(tmp_path) == want


@pytest.mark.parametrize(("load1", "runnable", "own", "affinity", "shared", "threads"), [
    (0.2, None, 1, 4, False, 4),  # idle machine
    (4.3, None, 4, 4, False, 4),  # the load is this process's own 4 running threads
    (2.0, None, 1, 4, True, 3),   # one other busy thread beyond half a core of slack: 1.0 > 0 + 0.5
    (0.0, None, 1, 2, True, 2),   # affinity narrower than the machine
    (0.3, 3, 1, 4, True, 2),      # two spinners started a moment ago: the load average lags, runnable does not
    (0.3, 7, 1, 4, True, 1),      # more others than cores: one thread
    (0.3, 2, 2, 4, False, 4),     # runnable now is this process's own 2 threads
    (3.5, 1, 1, 4, False, 4),     # load1 still high from a load that just stopped: runnable rules
])
def test_shared_flag(machine: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, load1: float,
                     runnable: int | None, own: int, affinity: int, shared: bool, threads: int) -> None:
    """Fault caught: not subtracting this process's own running threads (``others = load``) marks the
    second and last rows shared; dropping the affinity check misses the fourth row; ignoring the runnable count
    misses the fifth and sixth; preferring the lagging load average marks the last row shared; not cutting the threads keeps 4 where others hold cores."""
    monkeypatch.setattr(cpus, "affinity_count", lambda: affinity)
    monkeypatch.setattr(cpus, "_runnable_now", lambda: runnable)
    b = cpus.cpu_budget(tmp_path, load1=load1, own_running=own)
    assert b.shared is shared, b.reason
    assert b.usable == affinity and b.threads == threads, b.reason


def test_runnable_now_reads_proc_loadavg() -> None:
    """The median of the 4th field's numerator: at least this thread is runnable while it reads."""
    n = cpus._runnable_now()
    assert n is None or n >= 1


def test_threads_follow_share_and_policy_switch(machine: None, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """Fault caught: ``set_share`` ignored in ``cpu_budget`` (two concurrent trials each take all 4 cores);
    ``HONED_CPU_POLICY=off`` not honoured (the benchmark's "old" rows would measure the policy)."""
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cpus.cpu_budget(tmp_path, load1=0, own_running=1).threads == 3
    cpus.set_share(2)
    try:
        assert cpus.cpu_budget(tmp_path, load1=0, own_running=1).threads == 2
    finally:
        cpus.set_share(None)
    monkeypatch.setenv(cpus.POLICY_ENV, "off")
    old = cpus.cpu_budget(tmp_path, load1=9, own_running=1)
    assert (old.threads, old.shared) == (4, False)
    with pytest.raises(ValueError, match="at least 1"):
        cpus.set_share(0)


@pytest.mark.parametrize("shared", [True, False])
def test_ort_session_spinning(monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    """Fault caught: the config entries not added in ``build_session_options`` (spinning pools on shared
    CPUs), or added when not shared; intra-op threads not taken from the budget."""
    from honed.models.onnx_runtime import build_session_options

    monkeypatch.setattr(cpus, "cpu_budget", lambda: _budget(shared, threads=3))
    opts = build_session_options({})
    assert opts.intra_op_num_threads == 3
    if shared:
        assert opts.get_session_config_entry(SPIN) == "0"
        assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    else:
        with pytest.raises(RuntimeError):
            opts.get_session_config_entry(SPIN)


def test_ort_session_keeps_user_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault caught: the policy's entries applied after (over) the user's ``extra_session_config``, or the
    budget's threads replacing the user's ``intra_op_num_threads``."""
    from honed.models.onnx_runtime import build_session_options

    monkeypatch.setattr(cpus, "cpu_budget", lambda: _budget(True, threads=1))
    opts = build_session_options({"session_options": {"intra_op_num_threads": 5,
                                                      "extra_session_config": {SPIN: "1"}}})
    assert opts.intra_op_num_threads == 5
    assert opts.get_session_config_entry(SPIN) == "1"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


class _FakeGenai:
    """Records what ``load_genai`` overlays on ``og.Config``."""

    def __init__(self) -> None:
        self.overlays: list[dict[str, Any]] = []
        fake = self

        class Config:
            def __init__(self, folder: str) -> None:
                pass

            def overlay(self, text: str) -> None:
                fake.overlays.append(json.loads(text)["model"]["decoder"]["session_options"])

        self.Config = Config
        self.Model = lambda config: config


@pytest.mark.parametrize(("folder_options", "shared", "want"), [
    ({}, True, {"intra_op_num_threads": 2, SPIN: "0", "session.inter_op.allow_spinning": "0"}),
    ({}, False, {"intra_op_num_threads": 2}),
    ({"intra_op_num_threads": 7, SPIN: "1"}, True, {"session.inter_op.allow_spinning": "0"}),
])
def test_genai_session_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, folder_options: dict[str, Any],
                               shared: bool, want: dict[str, Any]) -> None:
    """Fault caught: load_genai overlaying the spinning entry over the folder's own (the user's) setting, or
    never adding it when shared; the folder's own thread count overridden."""
    from honed.models import onnx_runtime

    (tmp_path / "genai_config.json").write_text(json.dumps(
        {"model": {"context_length": 64, "decoder": {"session_options": folder_options}}}))
    fake = _FakeGenai()
    monkeypatch.setattr(onnx_runtime, "import_runtime", lambda name: fake)
    monkeypatch.setattr(cpus, "cpu_budget", lambda: _budget(shared, threads=2))
    onnx_runtime.load_genai(tmp_path)
    assert fake.overlays == [want]


def test_torch_threads_follow_budget_unless_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault caught: ``physical_core_threads`` using psutil's physical cores again (2 here, not the budget's 1),
    or ignoring the user's ``OMP_NUM_THREADS``; threads not restored afterwards."""
    import torch

    from honed.training.loop import physical_core_threads

    monkeypatch.setattr(cpus, "cpu_budget", lambda: _budget(False, threads=1))
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    try:
        with physical_core_threads():
            assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(1)
        with physical_core_threads():
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_search_trials_share_usable_cpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fault caught: the search dividing the affinity count, not the quota-capped usable count, among its
    concurrent trials."""
    from honed.search import runner

    monkeypatch.setattr(cpus, "affinity_count", lambda: 8)
    monkeypatch.setattr(cpus, "CGROUP", tmp_path)
    monkeypatch.setattr(cpus.usable_cpus, "__defaults__", (tmp_path,))
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert runner._cores() == 2
