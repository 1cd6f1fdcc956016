"""LoadRecheck: when a long run re-measures the load, and the thread count that follows (fake step times and
fake /proc/stat snapshots)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clasp.hardware.load import busy_cores
from clasp.hardware.recheck import LoadRecheck

WINDOW_SECONDS = 0.1
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def stat_text(busy_ticks: dict[int, int], idle_ticks: dict[int, int]) -> str:
    """/proc/stat with every CPU of this process: user ticks as busy, idle ticks as idle."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{c} {busy_ticks.get(c, 0)} 0 0 {idle_ticks.get(c, 0)} 0 0 0 0 0 0" for c in CPUS]
    return "\n".join(lines) + "\n"


class FakeProc:
    """A /proc/stat that advances between the two samples of `busy_cores` with `busy` CPUs fully busy."""

    def __init__(self, tmp_path: Path) -> None:
        self.stat, self.loadavg = tmp_path / "stat", tmp_path / "loadavg"
        self.busy = 0
        self.samples = 0

    def measure(self) -> float | None:
        self.samples += 1
        self.stat.write_text(stat_text({}, {}))
        self.loadavg.write_text(f"0.0 0.0 0.0 {1 + self.busy}/100 1\n")  # the reader, and `busy` others

        def advance(_seconds: float) -> None:  # the window: `busy` CPUs all busy, the rest all idle
            busy = {c: 100 for c in CPUS[:self.busy]}
            self.stat.write_text(stat_text(busy, {c: 100 for c in CPUS[self.busy:]}))
            # a real window's length: this process's own CPU time in it is subtracted, and over a few
            # microseconds an OpenMP thread still spinning after an earlier test's torch op reads as a whole core
            time.sleep(WINDOW_SECONDS)

        return busy_cores(0.0, self.stat, self.loadavg, sleep=advance)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def feed(recheck: LoadRecheck, times: list[float]) -> list[tuple[int, int]]:
    """(step number, new count) for every step that returned one."""
    out = []
    for seconds in times:
        new = recheck.step(seconds)
        if new is not None:
            out.append((recheck.steps, new))
    return out


def test_the_fake_proc_reads_as_that_many_busy_cores(proc: FakeProc) -> None:
    proc.busy = min(1, len(CPUS))
    assert proc.measure() == pytest.approx(proc.busy, abs=0.3)  # less this process's own CPU time in the window
    proc.busy = 0
    assert proc.measure() == 0.0  # nothing else runnable (/proc/loadavg): no sample at all


def test_steady_steps_re_measure_every_n_steps_and_keep_the_count(proc: FakeProc) -> None:
    recheck = LoadRecheck(threads=len(CPUS), cores=len(CPUS), measure=proc.measure, every=50, window=5, skip=2)
    assert feed(recheck, [1.0] * 160) == []
    assert proc.samples == 3  # steps 52, 102, 152: every 50 timed steps after the 2 skipped


def test_a_slowdown_re_measures_early_and_drops_the_threads_other_work_keeps_busy(tmp_path: Path) -> None:
    measured = []

    def measure() -> float:
        measured.append(1)
        return 3.0  # a new neighbour keeps three of eight cores busy

    recheck = LoadRecheck(threads=8, cores=8, measure=measure, every=1000, window=4, slowdown=1.5, skip=1)
    changes = feed(recheck, [9.0] + [1.0] * 10 + [2.0] * 4)
    assert changes == [(14, 5)] and recheck.threads == 5 and len(measured) == 1  # 3 of the last 4 steps slower


def test_a_small_rise_does_not_re_measure() -> None:
    recheck = LoadRecheck(threads=4, cores=4, measure=lambda: pytest.fail("measured"), every=1000, window=4,
                          slowdown=1.5, skip=0)
    assert feed(recheck, [1.0] * 4 + [1.3] * 40) == []


def test_a_slower_phase_that_is_not_load_re_measures_once_then_becomes_the_reference(proc: FakeProc) -> None:
    recheck = LoadRecheck(threads=len(CPUS), cores=len(CPUS), measure=proc.measure, every=1000, window=4, skip=0)
    assert feed(recheck, [1.0] * 4 + [2.0] * 40) == []
    assert proc.samples == 1


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cores in the affinity")
def test_threads_come_back_when_the_neighbour_leaves(proc: FakeProc) -> None:
    cores = len(CPUS)
    proc.busy = 1
    recheck = LoadRecheck(threads=cores, cores=cores, measure=proc.measure, every=10, window=3, skip=0)
    assert feed(recheck, [1.0] * 10) == [(10, cores - 1)]  # 10 steps after the start
    proc.busy = 0
    assert feed(recheck, [1.0] * 10) == [(20, cores)]  # 10 steps after the last re-check


def test_with_an_explicit_count_nothing_is_measured(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert not LoadRecheck.for_process(threads=2, explicit=2).enabled
    assert LoadRecheck.for_process(threads=2).enabled
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    recheck = LoadRecheck.for_process(threads=2, every=1, window=1, skip=0)
    assert not recheck.enabled and feed(recheck, [1.0, 5.0, 9.0]) == [] and recheck.checks == 0


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="slowdown > 1"):
        LoadRecheck(threads=1, cores=1, measure=lambda: 0.0, slowdown=1.0)


def test_watch_load_wraps_a_cpu_step_and_sets_the_new_count(monkeypatch) -> None:
    import torch

    import clasp.hardware.cores as cores
    import clasp.hardware.load as load
    from clasp.hardware.recheck import watch_load

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    monkeypatch.setattr(load, "busy_cores", lambda: 2.0)
    take_step = lambda: "done"  # noqa: E731
    assert watch_load(take_step, "cuda") is take_step and watch_load(take_step, "cpu", explicit=2) is take_step
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        step = watch_load(take_step, "cpu", every=3, window=2, skip=0)
        assert [step() for _ in range(3)] == ["done"] * 3
        assert step.recheck.checks == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
