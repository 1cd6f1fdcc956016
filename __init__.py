"""CLASP: CLIP-guided adaptable self-supervised pre-training for human-centric vision."""

__version__ = "0.1.0"
