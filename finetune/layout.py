"""What a `clasp finetune` run folder holds beyond every run's (`clasp.runs.layout` draws and names those).

```
OUT/                          clasp.runs.layout: config.json, metrics.jsonl, error.log, trackers/, checkpoints/
  results.json                RESULTS: the final metrics (fractions) and what produced them
  keypoints_val_results.json  pose: the predictions scored, in COCO's results format (evaluation.oks)
  checkpoints/step-XXXXXXXX/
    model.safetensors         backbone + task head, BatchNorm statistics included
                              (no stream-rankR.pt: a batch is a function of (seed, step, rank), so the
                              step in trainer.json is the whole data position)
```

`--force` deletes these with the common run files (`RUN_FILES`).
"""

from clasp.evaluation.oks import KEYPOINT_RESULTS
from clasp.runs.run_folder import RunFiles

RESULTS = "results.json"
RUN_FILES = RunFiles(own=(RESULTS, KEYPOINT_RESULTS))
