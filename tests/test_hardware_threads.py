"""The thread rule: --threads, then OMP_NUM_THREADS, then the share of the free cores; and where the count came from."""

from __future__ import annotations

import logging

import pytest

from clasp.hardware.cores import cores_from
from clasp.hardware.threads import CORES, ENVIRONMENT, EXPLICIT, FREE_CORES, choose_threads, needs_load_sample


@pytest.mark.parametrize("affinity, quota, cores", [(8, None, 8), (8, 2.5, 3), (8, 0.2, 1), (2, 16.0, 2), (0, None, 1)])
def test_cores_are_the_affinity_capped_by_the_quota_rounded_up(affinity: int, quota, cores: int) -> None:
    assert cores_from(affinity, quota) == cores


@pytest.mark.parametrize("cores, processes, busy, explicit, omp, threads, source", [
    (8, 1, None, None, None, 8, CORES),
    (8, 2, 0.0, None, None, 4, CORES),
    (8, 1, 3.2, None, None, 5, FREE_CORES),  # three busy cores (3.2 rounds to 3) are left alone
    (8, 2, 3.2, None, None, 4, CORES),  # the share (4) already leaves them
    (8, 2, 5.0, None, None, 3, FREE_CORES),
    (2, 1, 2.0, None, None, 1, FREE_CORES),  # at least one
    (8, 1, 3.2, None, "2", 2, ENVIRONMENT),  # OMP_NUM_THREADS wins over the load
    (8, 1, 3.2, 6, "2", 6, EXPLICIT),  # --threads wins over OMP_NUM_THREADS
    (2, 1, None, 4, None, 4, EXPLICIT),  # as given, even above the cores
    (8, 1, None, None, "zero", 8, CORES),  # an OMP_NUM_THREADS that is no positive integer is ignored
    (8, 1, None, None, "0", 8, CORES),
])
def test_the_first_rule_that_applies_decides(cores, processes, busy, explicit, omp, threads, source) -> None:
    choice = choose_threads(cores, processes, busy, explicit, omp)
    assert (choice.threads, choice.source) == (threads, source)


def test_the_summary_line_names_where_the_count_came_from() -> None:
    assert choose_threads(4, explicit=3).line() == "torch threads 3 (--threads, 4 cores available)"
    assert choose_threads(4, omp="2").line() == "torch threads 2 (OMP_NUM_THREADS, 4 cores available)"
    assert choose_threads(4, busy=1.0).line() == "torch threads 3 (free cores: 1.0 of 4 busy with other work, share 4)"
    assert choose_threads(4, 2).line() == "torch threads 2 (cores: share 2 of 4 available)"


def test_a_warning_for_fewer_threads_by_load_or_more_than_the_cores() -> None:
    assert "other work keeps 1.0 of 4 cores busy: 3 torch threads instead of 4" in choose_threads(4, busy=1.0).warning()
    assert "5 torch threads (--threads) on 4 available cores" in choose_threads(4, explicit=5).warning()
    assert choose_threads(4, explicit=4).warning() is None and choose_threads(4, busy=0.2).warning() is None


def test_the_load_is_sampled_only_when_it_decides() -> None:
    assert needs_load_sample(None, None) and needs_load_sample(None, "x")
    assert not needs_load_sample(2, None) and not needs_load_sample(None, "3")


def test_an_explicit_count_skips_the_load_sample_and_wins_over_the_environment(monkeypatch, caplog) -> None:
    import torch

    import clasp.hardware.cores as cores

    def no_sample() -> float:
        raise AssertionError("the load was sampled although --threads decides")

    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    monkeypatch.setattr(cores, "busy_cores", no_sample)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="clasp"):
            assert cores.use_available_cores(threads=2) == 2 and torch.get_num_threads() == 2
        assert "torch threads 2 (--threads, 4 cores available)" in caplog.text
        assert cores.torch_threads() == 3  # without the flag the environment decides, still without a sample
        choice = cores.set_torch_threads(threads=1)
        assert (choice.threads, choice.source) == (1, "--threads") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_command_declares_threads_as_the_one_shared_setting() -> None:
    from clasp.finetune.config import FinetuneConfig
    from clasp.labeling.config import LabelConfig
    from clasp.pretraining.config import PretrainConfig
    from clasp.runs.settings import RunSettings
    from clasp.settings import settings_of

    shared = {i.name: i for i in settings_of(RunSettings)}["threads"]
    for config in (PretrainConfig, FinetuneConfig, LabelConfig):
        mine = {i.name: i for i in settings_of(config)}["threads"]
        assert (mine.default, mine.limits, mine.optional) == (None, shared.limits, True), config.__name__
        assert mine.help.startswith(shared.help), config.__name__


def test_clasp_label_runs_with_the_explicit_thread_count(tmp_path, monkeypatch) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from clasp.hardware import probe_capability, resolve_precision
    from clasp.labeling.run import LabelConfig, run_labeling
    from clasp.store import ClipInfo

    seen = []

    class CountingLabeler:  # records torch's thread count while it labels
        def __init__(self, spec) -> None:
            self.spec, self.label_grid = spec, (4, 2)
            choice = resolve_precision(spec.precision, probe_capability("cpu"))
            self.precision_choice = choice
            self.clip_info = ClipInfo(spec.clip_model, spec.revision, tuple(spec.clip_size), spec.dense_mode,
                                      choice.precision)

        def preprocess(self, images):
            return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])

        def label(self, pixels):
            seen.append(torch.get_num_threads())
            n, parts = len(pixels), self.spec.vocab.num_parts
            return (np.zeros((n, 4, 2), np.uint8) % parts, np.zeros((n, 4, 2), np.float16),
                    np.zeros((n, self.spec.vocab.num_attributes), np.float16))

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 64), (40 * i, 0, 0)).save(images / f"{i}.png")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    config = LabelConfig(images=images, out=tmp_path / "shards", clip_model="stand-in", clip_size=(64, 32),
                         batch_size=2, progress=False, threads=3)
    assert run_labeling(config, CountingLabeler).labeled == 2
    assert seen == [3] and torch.get_num_threads() == before  # --threads over OMP_NUM_THREADS, then restored
