"""Evaluation: probes on frozen backbones, their metrics and intervals, label quality, reports.

- `features.py`, `frozen_backbone.py`, `probes.py`, `run_eval.py`: `clasp eval` (linear attributes, linear
  parsing, cosine kNN re-ID, linear pose); `coco_probe.py`: its pose probe on a COCO folder;
- `metrics.py`, `intervals.py`, `rerank.py`, `undefined.py`, `results_json.py`: mA, mIoU, re-ID mAP/rank-1,
  bootstrap intervals, re-ranking, and results files that never hold NaN;
- `pose_crops.py`, `heatmaps.py`, `oks.py`: top-down crops, heat maps and OKS AP, shared with
  `clasp finetune pose`;
- `config.py`: the declared settings of `clasp eval`, `eval-labels` and `truth-labels`;
- `label_quality.py`: `clasp eval-labels`; `truth_store.py`: `clasp truth-labels` (the ground-truth control);
- `no_information.py`, `reid_reference.py`: where losses and re-ID scores start when nothing is learned;
- `plots.py`: the charts of every report.

The data sets and the synthetic world are in `clasp.datasets`; the `make reproduce` pipeline in
`clasp.reproduce`.
"""
