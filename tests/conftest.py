"""Shared fixtures. Tests are offline, CPU-only and use tiny models and stores."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from clasp.runs.metrics_log import METRICS_FILE
from clasp.store import ClipInfo, LabelRows, Manifest, Vocabulary, record_shard, shard_name, write_shard_for


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary.default()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def synthetic_rows(n: int, vocab: Vocabulary, grid: tuple[int, int] = (16, 8), hw: tuple[int, int] = (256, 128),
                   seed: int = 0, start: int = 0) -> LabelRows:
    """Rows with random images and labels; row i's key encodes its global index `start + i`."""
    rng = np.random.default_rng(seed)
    images = [encode_jpeg(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for _ in range(n)]
    return LabelRows(
        image=images,
        key=[f"{start + i:040d}" for i in range(n)],
        path=[f"cam{(start + i) % 3}/img_{start + i:06d}.jpg" for i in range(n)],
        orig_hw=np.tile(np.array(hw, np.uint16), (n, 1)),
        part_mask=rng.integers(0, vocab.num_parts, (n, *grid)).astype(np.uint8),
        part_conf=rng.random((n, *grid)).astype(np.float16),
        attr_logits=rng.normal(size=(n, vocab.num_attributes)).astype(np.float16),
    )


def write_store(root: Path, vocab: Vocabulary, shard_rows: list[int], grid: tuple[int, int] = (16, 8),
                hw: tuple[int, int] = (256, 128), seed: int = 0) -> Path:
    """A shard folder at `root` with `shard_rows[i]` synthetic rows in shard i; row keys are global indices."""
    manifest = Manifest(ClipInfo("tiny-test-clip", input_hw=(hw[0], hw[1])), vocab, grid)
    manifest.image_store.hw = hw
    start = 0
    for index, n in enumerate(shard_rows):
        rows = synthetic_rows(n, vocab, grid, hw, seed=seed + index, start=start)
        entry = write_shard_for(manifest, root, shard_name(index), rows)
        record_shard(manifest, root, entry)
        start += n
    if not shard_rows:
        manifest.save(root)
    return root


@pytest.fixture
def make_store(tmp_path: Path, vocab: Vocabulary) -> Callable[..., Path]:
    """Factory: `make_store([rows per shard], grid=(16, 8))` writes a shard folder and returns it.

    Row keys are global indices (`int(key)`), so tests can check which rows were read.
    """
    counter = {"n": 0}

    def make(shard_rows: list[int], grid: tuple[int, int] = (16, 8), hw: tuple[int, int] = (256, 128),
             seed: int = 0, name: str | None = None) -> Path:
        counter["n"] += 1
        return write_store(tmp_path / (name or f"shards{counter['n']}"), vocab, shard_rows, grid, hw, seed)

    return make


@pytest.fixture
def store(make_store: Callable[..., Path]) -> Path:
    """The store of the pre-training runs: 17 rows of 64x32 images in shards of 10 and 7, an 8x4 label grid.

    In batches of 4 that is 5 batches per epoch, so a run of 6 or more steps crosses an epoch boundary.
    """
    return make_store([10, 7], grid=(8, 4), hw=(64, 32))


# The pre-training run of the end-to-end tests: a model of a few thousand parameters (two blocks, one of them
# MoE), fp32, a metrics line per step. Each test file adds its crops, loader workers, saving and steps.
TINY_RUN = dict(preset="tiny", dim=32, depth=2, heads=2, moe_layers=1, experts=3, top_k=2, dino_out_dim=64,
                dino_hidden_dim=32, dino_bottleneck_dim=16, batch_size=4, precision="fp32", log_every=1,
                shuffle_buffer=16, seed=0)


def read_metrics(out: Path, while_running: bool = False) -> list[dict]:
    """The rows of a run folder's metrics.jsonl (pre-training and fine-tuning write the same file).

    `while_running`: the run may not have started the file or may be writing its last line; those are no rows.
    """
    path = out / METRICS_FILE
    if while_running and not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            if not while_running:
                raise
    return rows


def losses(out: Path) -> dict[int, float]:
    """{step: total loss} of a run folder's metrics."""
    return {row["step"]: row["loss"] for row in read_metrics(out)}


def steps_logged(out: Path) -> list[int]:
    """The steps a run, perhaps still running, has logged so far."""
    return [row["step"] for row in read_metrics(out, while_running=True) if "step" in row]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny offline CLIP (seed 0), written once per test session; load with `load_clip`."""
    from clasp.labeling.tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip", seed=0)


@pytest.fixture
def make_rows(vocab: Vocabulary) -> Callable[..., LabelRows]:
    """Factory: `make_rows(n, grid=(16, 8), hw=(256, 128), seed=0, start=0)` -> synthetic `LabelRows`."""

    def make(n: int, grid: tuple[int, int] = (16, 8), hw: tuple[int, int] = (256, 128), seed: int = 0,
             start: int = 0) -> LabelRows:
        return synthetic_rows(n, vocab, grid, hw, seed=seed, start=start)

    return make


# huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported (during collection, before
# any fixture runs), so the autouse fixture above comes too late for it: set it at conftest import.
__import__("os").environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic world written by `clasp synth`: 8 identities x 6 images, 3 cameras, seed 0."""
    from clasp.datasets.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth") / "world"
    synthesize(SynthConfig(root, identities=8, images_per_id=6, cameras=3, seed=0))
    return root


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on two shared cores stall each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def caption_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small caption corpus written by `clasp synth-corpus`: 600 pairs, 6 cameras, seed 0."""
    from clasp.datasets.synth.corpus import CorpusConfig, write_corpus

    root = tmp_path_factory.mktemp("corpus") / "corpus"
    write_corpus(CorpusConfig(root, pairs=600, cameras=6, seed=0))
    return root


@pytest.fixture(scope="session")
def trained_clip(caption_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """(folder, TrainedClip): a tiny CLIP trained briefly on `caption_corpus` and saved, once per session."""
    import torch

    from clasp.labeling.train_clip import REPORT_FILE, TrainClipConfig, _write_report, save_clip, train

    folder = tmp_path_factory.mktemp("clip") / "clip"
    config = TrainClipConfig(corpus=caption_corpus, out=folder, steps=TRAINED_CLIP_STEPS, full_batch=16,
                             mosaic_batch=8, progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = train(config)
    finally:
        torch.set_num_threads(before)
    save_clip(trained.model, trained.tokenizer, folder, trained.model.config.vision_config.image_size)
    _write_report(folder / REPORT_FILE, config, trained.report)
    return folder, trained


TRAINED_CLIP_STEPS = 40


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but error.log."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "error.log"}
