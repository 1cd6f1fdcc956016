"""Facts and write rules that more than two packages need and that belong to no stage.

- `durable.py`: writes that survive a crash (temp file, fsync, rename);
- `person_size.py`: the size every stage gives a person picture (256 x 128);
- `percent.py`: how every report writes a fraction;
- `json_files.py`: reading a JSON file a user named, with one error line naming it.

Each module has one job; the package imports nothing of ours but `clasp.errors`
(which imports nothing), so every package (the label store included) may import it.
"""
