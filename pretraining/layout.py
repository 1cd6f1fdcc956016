"""The names of the files of a run folder and its checkpoints, in one place (an export: backbone.py).

```
OUT/                          (run_folder.py: when a new run may use it)
  config.json                 RUN_CONFIG: resolved settings (+ derived values, model, hardware)
  metrics.jsonl               METRICS_FILE: one JSON object per logged step
  error.log                   ERROR_LOG: why the last start was refused or failed
  rows-rankR.jsonl            ROWS_LOG: row ids read by process R (only with log_rows)
  checkpoints/                CHECKPOINTS_DIR (checkpoint.py: how each is written and read)
    step-XXXXXXXX/            (checkpoint.py: written as .tmp, renamed when complete)
      model.safetensors       MODEL_FILE: student, EMA teacher, heads, loss state
      optimizer.pt            OPTIMIZER_FILE
      scaler.pt               SCALER_FILE (fp16 only)
      rng-rankR.pt            RNG_FILE
      stream-rankR.pt         STREAM_FILE
      config.json             RUN_CONFIG again: the settings this checkpoint was made with
      trainer.json            TRAINER_FILE: global step, world size, clasp version
```
"""

from clasp.runs.error_log import ERROR_LOG  # noqa: F401 - declared once, for every command
from clasp.runs.metrics_log import METRICS_FILE  # noqa: F401 - declared once, for every training command

RUN_CONFIG = "config.json"
ROWS_LOG = "rows-rank{rank}.jsonl"
CHECKPOINTS_DIR = "checkpoints"

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng-rank{rank}.pt"
STREAM_FILE = "stream-rank{rank}.pt"
TRAINER_FILE = "trainer.json"
