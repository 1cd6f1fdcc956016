"""How labels may have been computed: the values a manifest may record for `clip.dense_mode` and `clip.precision`.

The labeler offers exactly these (`clasp label --dense-mode`, the resolved
precision) and the manifest reader accepts only these, so both read them here.
`clasp.labeling.dense_features` says what each dense mode computes. The module
imports nothing, so that the CLI can list the choices without loading h5py or torch.
"""

DENSE_MODES: tuple[str, ...] = ("maskclip", "naive", "clearclip", "sclip", "naclip")
LABEL_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")  # `auto` resolved
