"""`clasp.hardware.available_memory`: the smaller of MemAvailable and the cgroup's room."""

from __future__ import annotations

from pathlib import Path

from clasp.hardware import available_memory


def test_the_smaller_of_meminfo_and_the_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory(meminfo, cgroup) == 8000000 * 1024  # no cgroup files: meminfo alone
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("100\n")
    assert available_memory(meminfo, cgroup) == 8000000 * 1024  # an unlimited cgroup
    (cgroup / "memory.max").write_text(str(2 * 2**30) + "\n")
    (cgroup / "memory.current").write_text(str(2**30) + "\n")
    assert available_memory(meminfo, cgroup) == 2**30  # the cgroup has less room


def test_without_meminfo_or_cgroup_sysconf_answers(tmp_path: Path) -> None:
    value = available_memory(tmp_path / "none", tmp_path / "none")
    assert value is None or value > 0
