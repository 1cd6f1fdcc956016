"""Downstream fine-tuning of an exported backbone: `clasp finetune reid|attributes|parsing|pose`.

- `config.py`: every setting (one dataclass, config file + flags);
- `data.py`: which benchmark layout, read by `clasp.evaluation`'s readers;
- `batches.py`: the P x K sampler and plain batches, a pure function of (seed, epoch, rank, step);
- `augment.py`, `losses.py`, `model.py`: augmentation, the recipes' losses and schedule, heads;
- `recipes.py`: per task, a batch, its loss and the final evaluation (`pose.py`: crops, targets, flip test);
- `loop.py`, `checkpoint.py`: the Accelerate loop, run folder, checkpoints and exact resume.
"""
