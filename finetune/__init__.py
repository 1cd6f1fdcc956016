"""Downstream fine-tuning of an exported backbone: `clasp finetune reid|attributes|parsing|pose`.

- `config.py`: every setting (one dataclass, config file + flags; the training settings it shares with
  `clasp pretrain` are `clasp.runs.settings`');
- `data.py`: which benchmark layout, read by `clasp.datasets`' readers;
- `batches.py`: the P x K sampler and plain batches, a pure function of (seed, epoch, rank, step);
- `augment.py`, `losses.py`, `model.py`: augmentation, the recipes' losses, heads;
- `recipes.py`: per task, a batch, its loss and the final evaluation (`pose.py`: crops, targets, flip test);
- `loop.py`, `layout.py`: the step and what it supplies to `clasp.runs` (run folder, checkpoints, stop signals,
  schedule, exact resume), and the files of a fine-tuning run folder.
"""
