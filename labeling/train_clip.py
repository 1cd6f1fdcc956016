"""`clasp train-clip`: contrastively train a small CLIP on an image–caption corpus, for the labeler.

The labeler reads two things from CLIP: the image embedding (CLS path) against
attribute prompts, and dense patch tokens (MaskCLIP's value path through the
last block) against part prompts. Plain image-level InfoNCE trains only the
first, so each step here has two kinds of canvas, both built from corpus pairs
alone:

- **full views** — an image letterboxed to the input size; its CLS embedding
  against every caption of the step, symmetric InfoNCE (captions that are the
  same string count as one; text→image targets are uniform over its images).
- **mosaics** — corpus images packed as patch-aligned tiles of the canvas; every
  patch token, taken through the same value path the labeler uses
  (`dense_tokens`), is classified among all the step's captions with its own
  tile's caption as the target. Because the layout is the trainer's own, this
  aligns words with patches without any mask or box from the corpus. Tiles keep
  the corpus scale (`corpus_scale`: the scale at which its largest pictures fit
  the input), so a crop of shoes covers as many patches as shoes do when the
  labeler looks at a whole person; stretching tiles to fill their row
  (`tile_scale="row"`) taught feet and arms at sizes the labeler never sees. All the
  step's captions, not only the mosaic's own, compete for a patch: within one
  mosaic a colour alone names the tile, among a hundred captions "a red top" and
  "red trousers" must be told apart by what the patch shows.

Both losses share CLIP's learnable temperature (`logit_scale`, clamped at 100).
The tokenizer is a byte-level BPE learned from the corpus captions plus the
vocabulary's prompts (`tiny_clip.train_prompt_tokenizer`), so every prompt the
labeler will embed splits into known pieces.

The learning rate is DINO's warm-up + cosine (`clasp.runs.schedules`), down to
`MIN_LR_FRACTION` of the peak. From `clasp.runs` the command also takes the
folder lock (one writer of OUT), error.log (a refused or failed run's line),
metrics.jsonl and the trackers, and the stop-signal watcher: the first
SIGTERM/SIGINT ends the run after the step under way, which then evaluates and
saves the model it has (the report says how many steps it took); the second
exits at once with 128 + its number, its line in error.log. train-clip has no
checkpoints to resume from (`checkpoint_every` saves plain model folders).

Invariants: a run is a pure function of (corpus file contents, config) on a
given machine and thread count — the initial weights, the held-out split
(every `HOLDOUT_EVERY`-th pair), the pairs of each step and every mosaic layout
come from generators seeded by `config.seed`. The output folder loads with
`CLIPModel.from_pretrained` like any hub checkpoint (`clasp label --clip-model`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from clasp.errors import InputError, RunError
from clasp.labeling.caption_corpus import LETTERBOX_GREY, CorpusImages, load_corpus_images, read_caption_pairs
from clasp.labeling.errors import LabelingError
from clasp.labeling.text_embeddings import projected_features
from clasp.labeling.tiny_clip import PRESETS, clip_config, train_prompt_tokenizer, vocabulary_prompts
from clasp.labeling.train_clip_config import TrainClipConfig
from clasp.labeling.train_clip_log import TrainClipLog
from clasp.runs import FolderLockError, exclusive_folder
from clasp.runs.error_log import write_error_log
from clasp.runs.schedules import lr_schedule
from clasp.runs.stop_signals import StopSignals, run_stop_signals
from clasp.store import Vocabulary

HOLDOUT_EVERY = 20  # pair i is held out when i % 20 == 19
REPORT_FILE = "train_report.json"
MAX_LOGIT_SCALE = math.log(100.0)
TEXT_CHUNK = 64
NO_TARGET = -100  # a mosaic cell no tile covers: cross-entropy's ignore index
MIN_LR_FRACTION = 0.1  # the cosine ends near a tenth of the peak learning rate
NOT_SAVED = "the model was not saved (train-clip keeps no checkpoint to resume); start the run again"


@dataclass
class TrainClipReport:
    steps: int
    seconds: float
    train_pairs: int
    heldout_pairs: int
    first_loss: float
    last_loss: float
    heldout: dict[str, float]
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    stopped_by: str = "end"  # or the stop signal's name (SIGTERM, SIGINT): `steps` were done

    def line(self) -> str:
        h = self.heldout
        return (f"trained {self.steps} steps on {self.train_pairs} pairs in {self.seconds:.0f} s, loss "
                f"{self.first_loss:.2f} -> {self.last_loss:.2f}; held-out {self.heldout_pairs} pairs: image->text "
                f"R@1 {100 * h['image_to_text_r1']:.1f} % R@5 {100 * h['image_to_text_r5']:.1f} %, text->image R@1 "
                f"{100 * h['text_to_image_r1']:.1f} % (chance {100 * h['chance_r1']:.1f} %)")


# ---------------------------------------------------------------- the model's two readouts

def _last_block_input(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, None)
    return hidden


def image_embeddings(model: CLIPModel, hidden: torch.Tensor) -> torch.Tensor:
    """CLS through the unmodified last block, post-norm, projection: `get_image_features`."""
    out = model.vision_model.encoder.layers[-1](hidden, None)
    return model.visual_projection(model.vision_model.post_layernorm(out[:, 0]))


def dense_tokens(model: CLIPModel, hidden: torch.Tensor) -> torch.Tensor:
    """(N, h*w, D) patch tokens through MaskCLIP's value path, as the labeler's `maskclip` mode reads them."""
    block = model.vision_model.encoder.layers[-1]
    patches = hidden[:, 1:]
    patches = patches + block.self_attn.out_proj(block.self_attn.v_proj(block.layer_norm1(patches)))
    patches = patches + block.mlp(block.layer_norm2(patches))
    return model.visual_projection(model.vision_model.post_layernorm(patches))


def text_embeddings(model: CLIPModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return projected_features(model.get_text_features(input_ids=ids, attention_mask=mask))


def encode_captions(model: CLIPModel, rows: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                    chunk: int = TEXT_CHUNK) -> torch.Tensor:
    """(len(rows), D) text embeddings of caption rows, shortest first in chunks each padded to its own
    longest caption: short region captions then cost what they are, not what the longest costs."""
    order = torch.argsort(lengths[rows], stable=True)
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[order[start:start + chunk]]
        length = int(lengths[part].max())
        mask = (torch.arange(length)[None] < lengths[part, None]).long()
        out.append(text_embeddings(model, tokens[part, :length], mask))
    return torch.cat(out)[torch.argsort(order)]


# ---------------------------------------------------------------- canvases

def _randint(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def build_mosaic(gen: torch.Generator, images: CorpusImages, pool: torch.Tensor, hw: tuple[int, int],
                 patch: int) -> tuple[np.ndarray, torch.Tensor, list[int]]:
    """(canvas (H, W, 3) uint8, owner (h, w) tile index per patch, pair index per tile).

    Rows of 2-7 patches in height; each tile takes the next random pair and the
    width its aspect asks for (at least one patch, at most what is left of the row).
    """
    gh, gw = hw[0] // patch, hw[1] // patch
    canvas = np.empty((gh * patch, gw * patch, 3), dtype=np.uint8)
    owner = torch.empty((gh, gw), dtype=torch.long)
    chosen: list[int] = []
    y = 0
    while y < gh:
        h = min(_randint(gen, 2, 8), gh - y)
        h += 1 if gh - y - h == 1 else 0
        x = 0
        while x < gw:
            i = int(pool[_randint(gen, 0, len(pool))])
            img = images.originals[i]
            w = max(1, min(gw - x, round(h * img.width / img.height)))
            tile = img.resize((w * patch, h * patch), Image.Resampling.BILINEAR)
            canvas[y * patch:(y + h) * patch, x * patch:(x + w) * patch] = np.asarray(tile)
            owner[y:y + h, x:x + w] = len(chosen)
            chosen.append(i)
            x += w
        y += h
    return canvas, owner, chosen


def corpus_scale(images: CorpusImages, hw: tuple[int, int]) -> float:
    """The scale at which the corpus's largest pictures fit the input. Native tiles are shown at it:
    a crop then keeps, relative to the canvas, the size it had in the picture it was cut from, which
    is the size its kind of region has when the labeler looks at a whole picture."""
    tallest = max(image.height for image in images.originals)
    widest = max(image.width for image in images.originals)
    return min(hw[0] / tallest, hw[1] / widest)


def build_native_mosaic(gen: torch.Generator, images: CorpusImages, pool: torch.Tensor, hw: tuple[int, int],
                        patch: int, scale: float, tries: int = 6) -> tuple[np.ndarray, torch.Tensor, list[int]]:
    """Like `build_mosaic`, but every tile keeps the corpus scale (snapped to whole patches) instead of
    being stretched to its row: shelf packing, a tile that does not fit is redrawn up to `tries` times,
    and cells no tile covers are grey and owned by no tile (owner -1: no target)."""
    gh, gw = hw[0] // patch, hw[1] // patch
    canvas = np.full((gh * patch, gw * patch, 3), LETTERBOX_GREY, dtype=np.uint8)
    owner = torch.full((gh, gw), -1, dtype=torch.long)
    chosen: list[int] = []
    y = 0
    while y < gh:
        x, row = 0, 0
        misses = 0
        while x < gw and misses < tries:
            i = int(pool[_randint(gen, 0, len(pool))])
            img = images.originals[i]
            h = max(1, round(img.height * scale / patch))
            w = max(1, round(img.width * scale / patch))
            if h > gh - y or w > gw - x:
                misses += 1
                continue
            tile = img.resize((w * patch, h * patch), Image.Resampling.BILINEAR)
            canvas[y * patch:(y + h) * patch, x * patch:(x + w) * patch] = np.asarray(tile)
            owner[y:y + h, x:x + w] = len(chosen)
            chosen.append(i)
            x, row = x + w, max(row, h)
        y += max(row, 1)
    return canvas, owner, chosen


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 with CLIP's mean and std."""
    pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


@dataclass
class Step:
    pixels: torch.Tensor  # (F + M, 3, H, W) normalised: full views first, then mosaics
    full: int
    caption_rep: torch.Tensor  # (U,) a pair index per distinct caption of the step
    full_target: torch.Tensor  # (F,) caption id of each full view
    patch_target: torch.Tensor  # (M, h*w) caption id of each mosaic patch
    pairs: int  # pairs shown: full views plus mosaic tiles


def tile_pool(images: CorpusImages, pool: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Pairs whose image is smaller than the input in height or width: close-ups and crops, which
    show one thing. Whole pictures (a pedestrian, a street) would teach every patch of a small
    tile the caption of a whole scene. Falls back to every pair when none is smaller."""
    small = torch.tensor([images.originals[i].height < hw[0] or images.originals[i].width < hw[1]
                          for i in pool.tolist()], dtype=torch.bool)
    return pool[small] if bool(small.any()) else pool


def make_step(gen: torch.Generator, images: CorpusImages, pool: torch.Tensor, config: TrainClipConfig,
              patch: int, tiles: torch.Tensor, scale: float) -> Step:
    """One step's canvases and targets: full views drawn from `pool`, mosaics of `tiles` (at `scale` when
    native, `corpus_scale` computed once per run)."""
    full_idx = pool[torch.randint(0, len(pool), (config.full_batch,), generator=gen)].tolist()
    flips = torch.rand(config.full_batch, generator=gen) < 0.5
    full = images.full[full_idx]
    full[flips.numpy()] = full[flips.numpy()][:, :, ::-1]
    if config.tile_scale == "native":
        mosaics = [build_native_mosaic(gen, images, tiles, config.input_hw, patch, scale)
                   for _ in range(config.mosaic_batch)]
    else:
        mosaics = [build_mosaic(gen, images, tiles, config.input_hw, patch) for _ in range(config.mosaic_batch)]
    ids: dict[str, int] = {}
    rep: list[int] = []

    def caption_id(i: int) -> int:
        text = images.captions[i]
        if text not in ids:
            ids[text] = len(rep)
            rep.append(i)
        return ids[text]

    full_target = torch.tensor([caption_id(i) for i in full_idx])
    patch_target = torch.stack([torch.tensor([caption_id(i) for i in chosen] + [NO_TARGET])[owner.flatten()]
                                for _, owner, chosen in mosaics]) if mosaics else torch.empty(0, 0, dtype=torch.long)
    canvases = np.concatenate([full, np.stack([m[0] for m in mosaics])]) if mosaics else full
    return Step(normalise(canvases), config.full_batch, torch.tensor(rep), full_target, patch_target,
                config.full_batch + sum(len(m[2]) for m in mosaics))


# ---------------------------------------------------------------- loss

def contrastive_loss(model: CLIPModel, step: Step, tokens: torch.Tensor, lengths: torch.Tensor,
                     dense_weight: float = 1.0, within_mosaic: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE on full views plus patch-to-caption cross-entropy on mosaics."""
    text = F.normalize(encode_captions(model, step.caption_rep, tokens, lengths), dim=-1)
    scale = model.logit_scale.exp()
    hidden = _last_block_input(model, step.pixels)
    image = F.normalize(image_embeddings(model, hidden[:step.full]), dim=-1)
    i2t = F.cross_entropy(scale * image @ text.T, step.full_target)
    used = torch.unique(step.full_target)
    same = (step.full_target[None, :] == used[:, None]).float()
    t2i = -(F.log_softmax(scale * text[used] @ image.T, dim=-1) * same / same.sum(1, keepdim=True)).sum(1).mean()
    loss = (i2t + t2i) / 2
    if bool((step.patch_target >= 0).any()):
        dense = F.normalize(dense_tokens(model, hidden[step.full:]), dim=-1)
        logits = scale * dense @ text.T  # (M, h*w, U)
        if within_mosaic:  # a patch chooses among the captions of its own mosaic's tiles
            captions = logits.shape[2]
            present = torch.zeros(logits.shape[0], captions + 1, dtype=torch.bool)
            present.scatter_(1, step.patch_target.where(step.patch_target >= 0, captions), True)
            present = present[:, :captions]
            logits = logits.masked_fill(~present[:, None, :], float("-inf"))
        loss = loss + dense_weight * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), step.patch_target.flatten(),
                                                     ignore_index=NO_TARGET)
    return loss


# ---------------------------------------------------------------- setup, loop, report

def tokenize_all(tokenizer: CLIPTokenizer, captions: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, max_tokens) token ids (padded with end-of-text) and (N,) lengths, computed once."""
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc.input_ids, enc.attention_mask.sum(1)


def build_model(config: TrainClipConfig, captions: list[str]) -> tuple[CLIPModel, CLIPTokenizer]:
    """Tokenizer from the corpus text plus the vocabulary prompts; seeded random weights."""
    if config.arch not in PRESETS:
        raise LabelingError(f"unknown CLIP architecture {config.arch!r}; choose one of {', '.join(PRESETS)}")
    prompts = vocabulary_prompts(config.vocab or Vocabulary.default())
    tokenizer = train_prompt_tokenizer(sorted(set(captions)) + prompts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = CLIPModel(clip_config(PRESETS[config.arch], tokenizer))
    return model, tokenizer


def lr_steps(config: TrainClipConfig) -> np.ndarray:
    """The learning rate of every step: warm-up over `warmup` of them, then cosine towards a tenth of `lr`."""
    return lr_schedule("cosine", config.steps, config.lr, config.warmup, min_lr=MIN_LR_FRACTION * config.lr)


def make_optimizer(model: CLIPModel, config: TrainClipConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


@torch.no_grad()
def heldout_retrieval(model: CLIPModel, images: CorpusImages, held: torch.Tensor, tokens: torch.Tensor,
                      lengths: torch.Tensor, batch: int = 128) -> dict[str, float]:
    """Zero-shot retrieval among the held-out pairs; a caption string shared by several images counts for each."""
    model.eval()
    feats = []
    for start in range(0, len(held), batch):
        idx = held[start:start + batch]
        hidden = _last_block_input(model, normalise(images.full[idx.numpy()]))
        feats.append(F.normalize(image_embeddings(model, hidden), dim=-1))
    image = torch.cat(feats)
    texts = sorted({images.captions[i] for i in held.tolist()})
    rep = {t: i for i in reversed(held.tolist()) for t in [images.captions[i]]}
    text = F.normalize(encode_captions(model, torch.tensor([rep[t] for t in texts]), tokens, lengths), dim=-1)
    own = torch.tensor([texts.index(images.captions[i]) for i in held.tolist()])
    sim = image @ text.T
    top5 = sim.topk(min(5, len(texts)), dim=1).indices
    t2i_best = own[(text @ image.T).argmax(1)]
    rank = (sim > sim.gather(1, own[:, None])).sum(1).float() + 1  # 1 = the right caption is the best
    model.train()
    return {"image_to_text_mean_rank": float(rank.mean()), "chance_mean_rank": (len(texts) + 1) / 2,
            "image_to_text_r1": float((top5[:, 0] == own).float().mean()),
            "image_to_text_r5": float((top5 == own[:, None]).any(1).float().mean()),
            "text_to_image_r1": float((t2i_best == torch.arange(len(texts))).float().mean()),
            "chance_r1": 1.0 / len(texts), "captions": len(texts)}


def save_clip(model: CLIPModel, tokenizer: CLIPTokenizer, out: Path, image_size: int) -> None:
    """`save_pretrained` for model, tokenizer and image-processor config: loads like a hub checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                          image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD)).save_pretrained(out)


@dataclass
class TrainedClip:
    model: CLIPModel  # eval mode
    tokenizer: CLIPTokenizer
    report: TrainClipReport


def train(config: TrainClipConfig, open_log: Callable[[], TrainClipLog] | None = None,
          signals: StopSignals | None = None) -> TrainedClip:
    """Read the corpus, train (until the end, or the step a stop signal of `signals` arrived in), and
    evaluate on the held-out pairs; nothing is written but the log that `open_log` opens once the inputs
    are known to be good."""
    start = time.perf_counter()
    config.check()
    pairs = read_caption_pairs(config.corpus)
    images = load_corpus_images(pairs, config.input_hw)
    model, tokenizer = build_model(config, images.captions)
    patch = model.config.vision_config.patch_size
    if config.input_hw[0] % patch or config.input_hw[1] % patch:
        raise LabelingError(f"input size {config.input_hw} is not a multiple of the patch size {patch}")
    tokens, lengths = tokenize_all(tokenizer, images.captions, config.max_text_tokens)
    index = torch.arange(len(pairs))
    held = index[index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    pool = index[index % HOLDOUT_EVERY != HOLDOUT_EVERY - 1] if len(held) < len(pairs) else index
    log = open_log() if open_log is not None else None
    try:
        curve = _optimise(model, images, pool, tokens, lengths, config, tokenizer, log, signals)
        heldout = heldout_retrieval(model, images, held, tokens, lengths) if len(held) else {}
        if log is not None:
            log.trackers.log_row(len(curve), {"heldout": heldout})
    finally:
        if log is not None:
            log.close()
    stopped_by = signals.received if signals is not None and signals.received else "end"
    report = TrainClipReport(len(curve), time.perf_counter() - start, len(pool), len(held),
                             curve[0][1] if curve else float("nan"), _tail_mean(curve), heldout, curve, stopped_by)
    return TrainedClip(model.eval(), tokenizer, report)


def _optimise(model: CLIPModel, images: CorpusImages, pool: torch.Tensor, tokens: torch.Tensor,
              lengths: torch.Tensor, config: TrainClipConfig, tokenizer: CLIPTokenizer,
              log: TrainClipLog | None = None, signals: StopSignals | None = None) -> list[tuple[int, float]]:
    """The training loop; returns (step, loss) per step done, and writes a metrics row per step to `log`;
    ends after the step a stop signal arrived in."""
    patch = model.config.vision_config.patch_size
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    tiles = tile_pool(images, pool, config.input_hw) if config.tiles_from_crops else pool
    scale = corpus_scale(images, config.input_hw)
    model.train()
    curve: list[tuple[int, float]] = []
    bar = tqdm(range(config.steps), desc="train-clip", unit="step", disable=not config.progress, dynamic_ncols=True)
    tick, seen, lrs = time.perf_counter(), 0, lr_steps(config)
    for step_no in bar:
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[step_no])
        step = make_step(gen, images, pool, config, patch, tiles, scale)
        loss = contrastive_loss(model, step, tokens, lengths, config.dense_weight, config.dense_within_mosaic)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        value = float(loss.detach())
        curve.append((step_no, value))
        seen += step.pairs
        pairs_per_s = seen / (time.perf_counter() - tick)
        bar.set_postfix(loss=f"{value:.3f}", pairs_s=f"{pairs_per_s:.0f}")
        if log is not None:
            log.write({"step": step_no + 1, "loss": value, "lr": float(lrs[step_no]),
                       "logit_scale": float(model.logit_scale.detach().exp()), "pairs_per_s": pairs_per_s})
        if config.checkpoint_every and (step_no + 1) % config.checkpoint_every == 0 and step_no + 1 < config.steps:
            save_clip(model, tokenizer, Path(config.out) / f"step-{step_no + 1:06d}", model.config.vision_config.image_size)
        if signals is not None and signals.received is not None:
            break
    bar.close()
    return curve


def train_clip(config: TrainClipConfig) -> TrainClipReport:
    """`clasp train-clip`: train, then save the model and `train_report.json` to `config.out`, holding the
    folder's lock; a refused or failed run leaves its line in OUT/error.log."""
    out = Path(config.out)
    try:
        with exclusive_folder(out, "clasp train-clip"):
            return _train_and_save(config, out)
    except (InputError, RunError) as exc:
        if not isinstance(exc, FolderLockError):  # another command's folder: write nothing there
            write_error_log(out, str(exc), create=False)  # a folder the refusal did not make stays unmade
        raise


def _train_and_save(config: TrainClipConfig, out: Path) -> TrainClipReport:
    logs: list[TrainClipLog] = []  # opened by `train` once the inputs are good

    def open_log() -> TrainClipLog:
        logs.append(TrainClipLog(config))
        return logs[-1]

    def next_step() -> int:
        return (logs[-1].steps_done if logs else 0) + 1

    with run_stop_signals(out, True, next_step, "and saving the model", lambda: NOT_SAVED) as signals:
        trained = train(config, open_log, signals)
    save_clip(trained.model, trained.tokenizer, out, trained.model.config.vision_config.image_size)
    _write_report(out / REPORT_FILE, config, trained.report)
    return trained.report


def _tail_mean(curve: list[tuple[int, float]], n: int = 10) -> float:
    tail = [v for _, v in curve[-n:]]
    return sum(tail) / len(tail) if tail else float("nan")


def _write_report(path: Path, config: TrainClipConfig, report: TrainClipReport) -> None:
    body = {"config": config.record(), **asdict(report)}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
