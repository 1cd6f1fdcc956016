"""The size every stage gives a person picture: 256x128 (height x width).

SOLIDER and re-ID code crop people to 256x128; the labeler stores images at
this size, pre-training crops and the ViT take it as input, the synthetic world
draws it and evaluation resizes benchmark crops to it. It lives in the store
because the store is what the stages share, and in a module that imports
nothing so that the CLI can read it without loading h5py.
"""

PERSON_HW: tuple[int, int] = (256, 128)
