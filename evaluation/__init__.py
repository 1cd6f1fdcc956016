"""Evaluation: a synthetic person world with ground truth, probes on frozen backbones, reports.

- `synth/`: `clasp synth` (identities, cameras, drawing, writer) and its ground truth format;
- `truth.py`, `market1501.py`: reading a synthetic world or a Market-1501 folder;
- `keypoint_names.py`, `coco_keypoints.py`, `pose_crops.py`, `heatmaps.py`, `oks.py`: COCO person keypoints
  (facts, reader, top-down crops, heat maps, results and OKS AP), shared by `clasp eval` and `clasp finetune pose`;
- `metrics.py`, `label_grid.py`: mA, mIoU, re-ID mAP/rank-1, masks on a label grid;
- `features.py`, `probes.py`, `run_eval.py`, `backbone.py`: `clasp eval`; `coco_probe.py`: its pose probe on a COCO
  folder;
- `label_quality.py`: `clasp eval-labels`;
- `reproduce.py`, `reproduce_report.py`, `plots.py`, `report_figures.py`, `expert_load.py`: `make reproduce`.
"""
