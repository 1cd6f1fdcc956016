"""The one schedule module: DINO's warm-up + cosine and warm-up + step decay, one value per global step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clasp.runs.schedules import Schedules, cosine_schedule, lr_schedule, step_schedule


def test_warm_up_reaches_the_peak_on_its_last_step() -> None:
    lr = lr_schedule("cosine", 100, 2e-3, 0.1, min_lr=1e-6)
    assert len(lr) == 100 and lr[0] == 0.0
    assert np.all(np.diff(lr[:10]) > 0) and lr[9] == pytest.approx(2e-3) and lr[10] == pytest.approx(2e-3)
    assert lr.max() == pytest.approx(2e-3)


def test_cosine_ends_just_above_its_end_value_as_dinos_does() -> None:
    lr = cosine_schedule(1.0, 0.1, 10, warmup_steps=2)
    assert lr[:3].tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert lr[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr[-1] > 0.1 and np.all(np.diff(lr[2:]) < 0)
    assert cosine_schedule(0.04, 0.2, 5).tolist() == pytest.approx(
        [0.2 + 0.5 * (0.04 - 0.2) * (1 + math.cos(math.pi * i / 5)) for i in range(5)])  # rising too


def test_step_decay_multiplies_by_gamma_at_each_milestone() -> None:
    assert step_schedule(1.0, 10, [0.5, 0.8], 0.1).tolist() == pytest.approx([1] * 5 + [0.1] * 3 + [0.01] * 2)
    warm = lr_schedule("step", 10, 1.0, 0.2, milestones=[0.5], gamma=0.5)
    assert warm.tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])


def test_every_shape_has_one_finite_value_per_step_and_refuses_nonsense() -> None:
    for steps in (1, 2, 7):
        for shape in ("cosine", "step"):
            values = lr_schedule(shape, steps, 1e-3, 0.5, min_lr=0.0, milestones=[0.5])
            assert len(values) == steps and np.isfinite(values).all()
    with pytest.raises(ValueError, match="at least one step"):
        cosine_schedule(1.0, 0.0, 0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_schedule("linear", 10, 1.0, 0.0)


def test_pretrainings_three_schedules_index_by_step() -> None:
    schedules = Schedules.build(20, 1e-3, 1e-6, 0.25, 0.04, 0.4, 0.996, 1.0)
    lr, wd, momentum = schedules.at(4)
    assert schedules.steps == 20 and lr == pytest.approx(1e-3)
    assert schedules.at(0)[1:] == pytest.approx((0.04, 0.996)) and wd < 0.4 and momentum < 1.0
