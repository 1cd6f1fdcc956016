"""What a `clasp pretrain` run folder holds beyond every run's (`clasp.runs.layout` draws and names those).

```
OUT/                          clasp.runs.layout: config.json, metrics.jsonl, error.log, trackers/, checkpoints/
  rows-rankR.jsonl            ROWS_LOG: row ids read by process R (only with log_rows; run_logs.RowLog)
  checkpoints/step-XXXXXXXX/
    model.safetensors         student, EMA teacher, heads, loss state (the DINO centre)
    stream-rankR.pt           the shard stream's position of process R (epoch, shard order, rows consumed)
```

`--force` deletes these with the common run files (`RUN_FILES`). An export (`clasp export`) reads the
checkpoint's model.safetensors and config.json (backbone.py).
"""

from clasp.runs.run_folder import RunFiles

ROWS_LOG = "rows-rank{rank}.jsonl"
RUN_FILES = RunFiles(own=("rows-rank*.jsonl",))
