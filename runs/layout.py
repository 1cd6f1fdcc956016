"""The files every training run folder has, named once (each command's own files: its layout.py).

```
OUT/                          (run_folder.py: when a new run may use it, and taking it)
  .clasp.lock                 folder_lock.LOCK_NAME: held while a command writes the folder
  config.json                 RUN_CONFIG: resolved settings + derived values (saved_config.py)
  metrics.jsonl               METRICS_FILE: one JSON object per logged step (metrics_log.py)
  error.log                   ERROR_LOG: why the last start was refused or failed (error_log.py)
  trackers/                   TRACKERS_DIR: TensorBoard / W&B / MLflow files (trackers.py)
  checkpoints/                CHECKPOINTS_DIR (checkpoint.py: how each is written and read)
    step-XXXXXXXX/            written as step-XXXXXXXX.tmp/, renamed when every process wrote its part
      model.safetensors       MODEL_FILE: the whole training model (safetensors, no pickle)
      optimizer.pt            OPTIMIZER_FILE: AdamW state (loaded with weights_only=True)
      scaler.pt               SCALER_FILE: fp16 GradScaler state (fp16 only)
      rng-rankR.pt            RNG_FILE: Python, NumPy, torch (and CUDA) RNG states of process R
      stream-rankR.pt         STREAM_FILE: data position of process R (commands whose step is not it)
      config.json             RUN_CONFIG again: the settings this checkpoint was made with
      trainer.json            TRAINER_FILE: global step, world size; written last, marks it complete
```

Invariant: these names are declared here and nowhere else; a command adds its own run files (the
names `--force` deletes) through `run_folder.RunFiles`.
"""

from clasp.runs.error_log import ERROR_LOG
from clasp.runs.folder_lock import LOCK_NAME
from clasp.runs.metrics_log import METRICS_FILE
from clasp.runs.trackers import TRACKERS_DIR

RUN_CONFIG = "config.json"
CHECKPOINTS_DIR = "checkpoints"

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng-rank{rank}.pt"
STREAM_FILE = "stream-rank{rank}.pt"
TRAINER_FILE = "trainer.json"

# What every run folder's run files are (besides a command's own): `--force` deletes them.
COMMON_RUN_FILES = (RUN_CONFIG, METRICS_FILE, CHECKPOINTS_DIR, ERROR_LOG, TRACKERS_DIR)

__all__ = ["CHECKPOINTS_DIR", "COMMON_RUN_FILES", "ERROR_LOG", "LOCK_NAME", "METRICS_FILE", "MODEL_FILE",
           "OPTIMIZER_FILE", "RNG_FILE", "RUN_CONFIG", "SCALER_FILE", "STREAM_FILE", "TRACKERS_DIR", "TRAINER_FILE"]
