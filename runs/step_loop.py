"""The step loop every training command runs: a step, then a log line and a checkpoint when due, until a stop.

```
while step < end:                   end = min(total steps, stop_at)
    done = take_step()              one optimizer step; done.stop: the all-reduced stop flag is set
    step += 1
    log(done)  when step % log_every == 0, at `end`, or on a stop
    save() when step % save_every == 0, at `end`, or on a stop
    stop -> return (step, the signal's name)
```

Invariants: every process runs the same number of steps (the stop flag comes from the step's all-reduce,
so all of them see it after the same step), so the collective `save` is reached by all together; the
last step done is always logged and saved, whether it ends the run, meets `stop_at` or follows a signal.
The command supplies `take_step`, `log` and `save` (its model, its batches, its loss); the loop knows
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from clasp.runs.stop_signals import StopSignals


class StepDone(Protocol):
    stop: bool  # a stop signal reached some process before the step's all-reduce


Done = TypeVar("Done", bound=StepDone)


@dataclass(frozen=True)
class Every:
    """How often to log and save, and the step the loop ends at."""

    log: int
    save: int
    end: int

    def due(self, step: int, every: int, stop: bool) -> bool:
        return step % every == 0 or step == self.end or stop


def run_steps(step: int, every: Every, signals: StopSignals, take_step: Callable[[], Done],
              log: Callable[[Done], None], save: Callable[[], None]) -> tuple[int, str | None]:
    """Steps from `step` to `every.end`; (the step reached, the signal that stopped the loop or None)."""
    while step < every.end:
        done = take_step()
        step += 1
        if every.due(step, every.log, done.stop):
            log(done)
        if every.due(step, every.save, done.stop):
            save()
        if done.stop:
            return step, signals.received or "signal"
    return step, None
