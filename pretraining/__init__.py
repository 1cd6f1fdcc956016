"""Stage two: streaming the label store into a prompt-controlled MoE ViT, and exporting its backbone.

- the data: `stream.py` (shards -> multi-crop batches, split over ranks and workers; `epoch_plan.py`,
  `augment.py`, `batch.py`), `batch_source.py` (batches across epochs, the wait timed);
- the model: `vit.py` with `moe.py` (PC-MoE) and `tasks.py`, `heads.py`, the losses (`dino_loss.py`,
  `part_loss.py`, `attribute_loss.py`) and `model.py` (student, EMA teacher, heads and losses behind one
  forward);
- the run: `config.py` (its settings; the shared ones are `clasp.runs.settings`'), `run_state.py` (from a
  config to a run ready for its first step), `train.py` (the step it gives `clasp.runs.step_loop`),
  `step_stats.py`, `run_logs.py`, `layout.py`, `errors.py`; the run folder, checkpoints,
  stop signals and schedules are `clasp.runs`';
- the result: `export.py` (`clasp export`, settings in `export_config.py`, `onnx_export.py`, `model_card.py`),
  `backbone.py` (`load_backbone`), `hub.py`.

`load_backbone(DIR)` is the one entry point users of an exported backbone need;
it is imported lazily so that `import clasp.pretraining` stays cheap.
"""

from __future__ import annotations

__all__ = ["load_backbone"]


def __getattr__(name: str):
    if name == "load_backbone":
        from clasp.pretraining.backbone import load_backbone

        return load_backbone
    raise AttributeError(f"module 'clasp.pretraining' has no attribute {name!r}")
