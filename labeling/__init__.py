"""Stage one, `clasp label`: CLIP pseudo-labels (part masks, attribute logits) of person images, in shards.

The chain: `discover.py` (the images) -> `plan.py` (which shards to write, which to keep on a rerun) ->
`executors.py` (in process or dask workers) -> `shard_worker.py` (decode, label, write one shard) with
`decode.py`, `labeler.py`, `dense_features.py`, `text_embeddings.py`, `pseudo_labels.py`; `run.py` ties them
and `config.py` declares the settings; `clip_loading.py` loads a CLIP strictly; `quick_gelu.py` and
`fused_linear.py` rewrite the labeler's own copy of the vision tower for speed (the same outputs).
The labeler's model: `clasp tiny-clip` (`tiny_clip.py`) and `clasp train-clip` (`train_clip*.py`, reading a
caption corpus with `caption_corpus.py`). It writes through `clasp.store` and never imports `clasp.pretraining`.
"""
