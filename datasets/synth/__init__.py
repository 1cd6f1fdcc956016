"""A synthetic person world with exact ground truth: identities, cameras, drawing, writer."""

from clasp.datasets.synth.writer import SynthConfig, SynthSummary, image_path, synthesize

__all__ = ["SynthConfig", "SynthSummary", "image_path", "synthesize"]
