"""The task prompts a backbone may have: one learned prompt per downstream task.

Declared here, free of torch, so that the command line can offer the names
(`clasp export --task`) without importing the model.
"""

TASKS: tuple[str, ...] = ("instance", "part", "attribute")
