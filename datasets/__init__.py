"""Data sets: the synthetic person world, and a reader per benchmark layout.

One module per data set, each turning a folder as released into plain arrays
and paths, and raising `DatasetError` (one line naming the file) on a folder
that does not hold what its layout promises:

- `synth/`: `clasp synth` (identities, cameras, drawing, keypoints, writer, benchmark layouts) and
  `clasp synth-corpus` (the image–caption corpus a CLIP is trained on); `truth.py` reads its ground truth;
- re-ID: `market1501.py`, `msmt17.py`; attributes: `pa100k.py`, `peta.py` (one shape: `attribute_data.py`);
  parsing: `lip.py` (LIP and CIHP); pose: `coco_keypoints.py` with COCO's facts in `keypoint_names.py`;
- `label_grid.py`: a pixel mask brought down to the label grid, as stores and probes see it;
- `synth_config.py`: the declared settings of `clasp synth` and `clasp synth-corpus` (light: the command
  line reads them without importing the renderer).

The floor below `evaluation/`, `finetune/` and `reproduce/`: it imports only `clasp.store` (the vocabulary),
`clasp.common`, `clasp.settings` and `clasp.errors`, never those three.
"""
