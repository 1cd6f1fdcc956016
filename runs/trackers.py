"""Experiment trackers beside metrics.jsonl: TensorBoard, W&B and MLflow, through Accelerate's tracker API.

`report_to` (declared once in `TrackerSettings`; every training command's config reuses the declaration)
picks them: `none` (the default), one of TRACKERS, or `all` (every one of them that is installed).
metrics.jsonl is written either way and stays the record: each row it gets is also logged at its `step`
(`Trackers.log_row`), nested values flattened to `a/b` names (`expert_load/1/3`: layer 1, expert 3)
and anything but a number left out. The resolved config (what the run folder's config.json holds) is
logged once per start as hyper-parameters, flattened the same way, scalars only.

The files, in the run folder OUT (Accelerate's project_dir; OUT/trackers is its logging_dir):

    OUT/trackers/
      PROJECT/          TensorBoard's event files (PROJECT: clasp-pretrain, clasp-finetune-TASK,
                        clasp-train-clip); each start adds folders named by the time for its hyper-parameters
      wandb/            W&B's files (offline runs included)
      wandb-id          the W&B run id of this run folder
      mlflow.db         MLflow's store (SQLite: MLflow 3 refuses a folder store), unless
                        MLFLOW_TRACKING_URI names another; mlartifacts/: a new experiment's artifacts
      mlflow-run-id     the MLflow run id of this run folder

Invariants: only the main process starts trackers and logs (the others hold a `Trackers` that does
nothing). A fresh start removes OUT/trackers, as it starts metrics.jsonl anew. A resumed start continues
the same tracker run: TensorBoard in the same folder, with the events after the checkpoint's step purged
(`purge_step`) as metrics.jsonl's lines after it are dropped; W&B with the saved id and
`resume="allow"`; MLflow with the saved run id, keeping the first start's parameters (MLflow refuses to
change one). `report_to_problem` finds a missing package before any work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from clasp.settings import setting

log = logging.getLogger("clasp")

TRACKERS = ("tensorboard", "wandb", "mlflow")  # each is also the name of its package and of its extra
REPORT_TO = ("none", *TRACKERS, "all")
TRACKERS_DIR = "trackers"
WANDB_ID_FILE = "wandb-id"
MLFLOW_ID_FILE = "mlflow-run-id"
MLFLOW_STORE = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


@dataclass
class TrackerSettings:
    """The tracker settings, declared once; a command's config takes them with `same_as(TrackerSettings, name)`."""

    report_to: str = setting("none", "Experiment trackers that also get every metrics.jsonl row and the resolved "
                             "config: none, tensorboard, wandb, mlflow, or all (those installed); their files go to "
                             "OUT/trackers/. Each is an extra: pip install -e '.[tensorboard]'.", choices=REPORT_TO,
                             resumable=True)
    run_name: str = setting("", "The run's name in W&B and MLflow (TensorBoard shows the run folder).",
                            shown="the --out folder's name", resumable=True)


def installed(tracker: str) -> bool:
    """Whether the tracker's package is there, found without importing it (W&B and MLflow import slowly)."""
    try:
        return importlib.util.find_spec(tracker) is not None
    except (ImportError, ValueError):
        return False


def chosen(report_to: str) -> list[str]:
    """The trackers `report_to` asks for; `all` is every one installed."""
    if report_to == "all":
        return [tracker for tracker in TRACKERS if installed(tracker)]
    return [report_to] if report_to in TRACKERS else []


def report_to_problem(report_to: str) -> str | None:
    """Why `report_to` cannot be used here (unknown, or its package missing), one phrase naming it; None: it can.

    Each command checks this with its other settings, so a missing package stops it before any work.
    """
    if report_to not in REPORT_TO:
        return f"unknown report_to {report_to!r}; report_to must be {', '.join(REPORT_TO[:-1])} or all"
    if report_to in TRACKERS and not installed(report_to):
        return (f"report_to {report_to}: the {report_to} package is not installed; "
                f"pip install -e '.[{report_to}]' installs it")
    if report_to == "all" and not chosen("all"):
        return (f"report_to all: none of {', '.join(TRACKERS)} is installed; "
                "pip install -e '.[tensorboard]' installs one")
    return None


def accelerator_options(report_to: str, out: str | Path) -> dict[str, Any]:
    """`Accelerator` keyword arguments: the trackers as `log_with`, the run folder as project_dir and
    OUT/trackers as logging_dir (nothing is created until the trackers start)."""
    from accelerate.utils import ProjectConfiguration

    out = Path(out)
    return {"log_with": chosen(report_to) or None,
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TRACKERS_DIR))}


class Trackers:
    """The trackers of one run, as the main process's Accelerator holds them; without any, each method does nothing."""

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator

    def log_row(self, step: int, row: Mapping[str, Any]) -> None:
        """Log the numbers of one metrics row at `step`."""
        values = metric_values(row)
        if self.accelerator is not None and values:
            self.accelerator.log(values, step=step)

    def finish(self) -> None:
        """End the trackers (`end_training`), for a command whose Accelerator serves its trackers only."""
        if self.accelerator is not None:
            self.accelerator.end_training()
            self.accelerator = None


def start_trackers(accelerator: Any, project: str, run_name: str, out: str | Path, config: Mapping[str, Any],
                   resume_step: int | None) -> Trackers:
    """Start the trackers of `accelerator.log_with` on the main process, once the run folder is this run's.

    `run_name` "" is the run folder's name. `resume_step`: the step a resumed run continues after (None: a
    fresh start, which removes OUT/trackers).
    """
    if not (accelerator.is_main_process and accelerator.log_with):
        return Trackers()
    run_name = run_name or Path(out).resolve().name
    folder = Path(out) / TRACKERS_DIR
    if resume_step is None:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    mlflow_continues = resume_step is not None and (folder / MLFLOW_ID_FILE).is_file()
    names = [str(tracker) for tracker in accelerator.log_with]
    if "mlflow" in names:
        use_local_mlflow_store(folder)
    accelerator.init_trackers(project, init_kwargs=init_kwargs(names, folder, run_name, resume_step))
    values = hyperparameters(config)
    for tracker in accelerator.trackers:
        if not (tracker.name == "mlflow" and mlflow_continues):
            tracker.store_init_configuration(values)
        if tracker.name == "mlflow":
            (folder / MLFLOW_ID_FILE).write_text(tracker.tracker.info.run_id + "\n", encoding="utf-8")
    log.info(f"experiment trackers: {', '.join(names)} (run {run_name!r}, files in {folder})")
    return Trackers(accelerator)


def init_kwargs(names: list[str], folder: Path, run_name: str, resume_step: int | None) -> dict[str, dict[str, Any]]:
    """The start arguments of each tracker in `names`: TensorBoard purges what a dead run logged after the
    checkpoint; W&B and MLflow continue the run whose id the folder holds, or start one (and keep its id)."""
    kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in names:
        kwargs["tensorboard"] = {} if resume_step is None else {"purge_step": resume_step + 1}
    if "wandb" in names:
        kwargs["wandb"] = {"name": run_name, "id": wandb_id(folder), "resume": "allow", "dir": str(folder)}
    if "mlflow" in names:
        saved = folder / MLFLOW_ID_FILE
        kwargs["mlflow"] = {"run_name": run_name, "logging_dir": str((folder / MLFLOW_ARTIFACTS).resolve()),
                            "run_id": saved.read_text(encoding="utf-8").strip() if saved.is_file() else None}
    return kwargs


def wandb_id(folder: Path) -> str:
    """The W&B run id kept in the folder, made (8 characters, as W&B's own) when there is none."""
    path = folder / WANDB_ID_FILE
    if not path.is_file():
        path.write_text(secrets.token_hex(4) + "\n", encoding="utf-8")
    return path.read_text(encoding="utf-8").strip()


def use_local_mlflow_store(folder: Path) -> None:
    """MLflow writes to OUT/trackers/mlflow.db unless MLFLOW_TRACKING_URI names a store (a server, a database)."""
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{(folder / MLFLOW_STORE).resolve()}")


# ----------------------------------------------------------------------------- what is logged


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a/b': leaf} of nested mappings and lists (a list's items named by their index)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (list, tuple)):
            out.update(flatten(dict(enumerate(value)), name + "/"))
        else:
            out[name] = value
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_values(row: Mapping[str, Any]) -> dict[str, int | float]:
    """The numbers of a metrics row, flattened, without `step` (the axis they are logged at)."""
    return {name: value for name, value in flatten(row).items() if name != "step" and is_number(value)}


def hyperparameters(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The config flattened to the scalars every tracker takes as a hyper-parameter (paths as text; None left out)."""
    out: dict[str, bool | int | float | str] = {}
    for name, value in flatten(config).items():
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out
