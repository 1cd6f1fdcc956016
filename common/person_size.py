"""The size every stage gives a person picture: 256x128 (height x width).

SOLIDER and re-ID code crop people to 256x128; the labeler stores images at
this size, pre-training crops and the ViT take it as input, the synthetic world
draws it and evaluation resizes benchmark crops to it. It imports nothing, so
the CLI can read it without loading h5py or torch.
"""

PERSON_HW: tuple[int, int] = (256, 128)
