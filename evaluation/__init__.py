"""Evaluation: a synthetic person world with ground truth, probes on frozen backbones, reports.

- `synth/`: `clasp synth` (identities, cameras, drawing, writer) and its ground truth format;
- `truth.py`, `market1501.py`: reading a synthetic world or a Market-1501 folder;
- `metrics.py`, `label_grid.py`: mA, mIoU, re-ID mAP/rank-1, masks on a label grid;
- `features.py`, `probes.py`, `run_eval.py`, `backbone.py`: `clasp eval`;
- `label_quality.py`: `clasp eval-labels`;
- `reproduce.py`, `reproduce_report.py`, `plots.py`, `report_figures.py`, `expert_load.py`: `make reproduce`.
"""
