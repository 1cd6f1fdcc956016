"""Probes on frozen features: linear attributes, linear parsing, linear pose, cosine kNN re-ID.

The linear probes are fitted full-batch with L-BFGS and an L2 penalty on standardised features
(mean and spread from the training rows), from zero weights, for a fixed number
of steps: the result is a function of the features alone, with no sampling and
no seed. Attribute probing trains one linear layer over all value columns with
a softmax cross-entropy inside each group; parsing trains a per-token linear
classifier on the patch tokens against the ground truth mask brought down to the
token grid by majority (`clasp.datasets.label_grid`), and is scored both on
that grid and at full resolution after bilinear upsampling of the logits.

Pose is one 3 x 3 convolution over the grid of patch tokens whose outputs are
the heat-map pixels beneath each token (a 4 x 4 block per keypoint for patch
16: the quarter-size heat maps of `clasp.evaluation.heatmaps`, "pixel
shuffled"): a linear map from each token and its eight neighbours. Its loss is
the unweighted mean squared error to the Gaussian targets (a point outside the
image has a target of zeros), so the fit is ridge regression with the same L2
penalty and standardisation, solved in closed form from sums gathered a chunk
of images at a time: the optimum L-BFGS would approach, at the cost of one
pass instead of hundreds over (tokens x 17 x 16) outputs. `fit_pose_probe`
takes the chunks as they come (a COCO run never holds every token); the
standardisation, known only after the last chunk, is applied to the sums
(`_StreamedPoseSums`), so one chunk or many give the same probe. The neighbours
matter: a token alone cannot tell where in its 16 pixels a joint lies, and its
argmax lands on a far token (OKS 0.27 against 0.48 with them, for a CLASP
export on the `make reproduce` world). Decoded as the recipe decodes (argmax +
quarter offset) and scored by OKS AP (`clasp.evaluation.oks`) against the
truth mask's area.

Splits (`identity_split`, `query_gallery_split`):
- identities, sorted by number: the first half (rounded down) trains the
  probes, the rest are the test identities;
- re-ID uses the test identities only: the first image of each (identity,
  camera) pair is a query, every other test image is in the gallery.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from clasp.datasets.attribute_data import binary_attributes
from clasp.evaluation.config import ProbeSettings  # declared with the other settings of `clasp eval`
from clasp.evaluation.metrics import (
    confusion_matrix, iou_per_class, label_based_accuracy, reid_scores,
)


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def identity_split(identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) row masks: the lower half of the sorted identity numbers trains."""
    identities = np.asarray(identities)
    unique = np.unique(identities)
    train_ids = unique[: len(unique) // 2]
    train = np.isin(identities, train_ids)
    return train, ~train


def query_gallery_split(identities: np.ndarray, cameras: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (query, gallery) among `rows`: the first row of each (identity, camera) is a query."""
    seen: set[tuple[int, int]] = set()
    query, gallery = [], []
    for r in np.asarray(rows):
        key = (int(identities[r]), int(cameras[r]))
        (gallery if key in seen else query).append(int(r))
        seen.add(key)
    return np.array(query, np.int64), np.array(gallery, np.int64)


def _scale(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and spread of the training rows; a column constant in training keeps spread 1."""
    mean = train.mean(0, keepdims=True)
    std = train.std(0, keepdims=True)
    std[std < 1e-6] = 1.0  # a dimension constant in training carries nothing; do not blow it up
    return mean, std


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mean, std = _scale(train)
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, *others)]


def _fit_linear(x: torch.Tensor, loss_fn, out_dim: int, settings: ProbeSettings) -> torch.nn.Linear:
    """Minimise loss + l2/2 * |W|^2 from zero weights with full-batch L-BFGS: a convex problem
    with one solution, reached the same way on every run."""
    layer = torch.nn.Linear(x.shape[1], out_dim)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=settings.steps, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(layer(x)) + 0.5 * settings.l2 * layer.weight.square().sum()
        loss.backward()
        return loss

    with _torch_threads(settings.threads):
        opt.step(closure)
    return layer


def attribute_probe(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray,
                    group_sizes: list[int], settings: ProbeSettings = ProbeSettings()) -> dict:
    """Linear probe on CLS features; labels are (N, G) value indices. Returns mA and its parts."""
    xtr, xte = _standardise(train_x, test_x)
    ytr = torch.from_numpy(np.asarray(train_labels, np.int64))
    bounds = np.concatenate([[0], np.cumsum(group_sizes)]).tolist()
    # All groups in one cross-entropy: logits gathered into (N, values, groups), padding at -inf.
    widest = max(group_sizes)
    columns = torch.tensor([[bounds[g] + min(k, size - 1) for g, size in enumerate(group_sizes)] for k in range(widest)])
    padding = torch.tensor([[k >= size for size in group_sizes] for k in range(widest)])

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        grouped = logits[:, columns].masked_fill(padding, float("-inf"))
        return F.cross_entropy(grouped, ytr) * len(group_sizes)  # = sum over groups of each group's mean

    layer = _fit_linear(xtr, loss_fn, bounds[-1], settings)
    with torch.no_grad():
        logits = layer(xte).numpy()
    pred = np.stack([logits[:, bounds[g]:bounds[g + 1]].argmax(1) for g in range(len(group_sizes))], axis=1)
    test_labels = np.asarray(test_labels)
    per_attribute = label_based_accuracy(binary_attributes(pred, group_sizes), binary_attributes(test_labels, group_sizes))
    return {
        "mA": float(np.nanmean(per_attribute)) if np.isfinite(per_attribute).any() else float("nan"),
        "per_attribute": per_attribute,
        "group_accuracy": (pred == test_labels).mean(0),
        "pred": pred,  # (N, G) value index per test row, for intervals
    }


def parsing_probe(train_tokens: np.ndarray, train_grid_masks: np.ndarray, test_tokens: np.ndarray,
                  test_grid_masks: np.ndarray, num_classes: int, test_pixel_masks: np.ndarray | None = None,
                  settings: ProbeSettings = ProbeSettings()) -> dict:
    """Per-token linear probe. Tokens (N, P, D), grid masks (N, h, w) with h*w = P.

    Pixels of `test_pixel_masks` at or above `num_classes` (LIP's and CIHP's 255) are not scored."""
    n_train, p, d = train_tokens.shape
    grid = test_grid_masks.shape[1:]
    xtr, xte = _standardise(train_tokens.reshape(-1, d), test_tokens.reshape(-1, d))
    ytr = torch.from_numpy(np.asarray(train_grid_masks, np.int64).reshape(-1))
    layer = _fit_linear(xtr, lambda logits: F.cross_entropy(logits, ytr), num_classes, settings)
    with torch.no_grad():
        logits = layer(xte).reshape(len(test_tokens), *grid, num_classes)
    per_image = per_image_confusion(logits.argmax(-1).numpy(), test_grid_masks, num_classes)
    out = {"iou_grid": iou_per_class(per_image.sum(0)), "grid_confusion_per_image": per_image}
    out["mIoU_grid"] = _nanmean(out["iou_grid"])
    if test_pixel_masks is not None:
        pixel_conf = np.zeros((num_classes, num_classes), np.int64)
        hw = test_pixel_masks.shape[1:]
        for start in range(0, len(test_tokens), settings.pixel_batch):
            block = logits[start:start + settings.pixel_batch].permute(0, 3, 1, 2)
            up = F.interpolate(block, size=hw, mode="bilinear", align_corners=False).argmax(1).numpy()
            truth = np.asarray(test_pixel_masks[start:start + settings.pixel_batch])
            valid = truth < num_classes  # benchmarks mark pixels to ignore with a value beyond the classes (255)
            pixel_conf += confusion_matrix(up[valid], truth[valid], num_classes)
        out["iou_pixel"] = iou_per_class(pixel_conf)
        out["mIoU_pixel"] = _nanmean(out["iou_pixel"])
    return out


@dataclass
class PoseProbe:
    """A fitted pose probe: the tokens' standardisation and the 3 x 3 convolution to heat-map blocks."""

    image_hw: tuple[int, int]
    grid: tuple[int, int]  # token grid
    sub: tuple[int, int]  # heat-map pixels beneath one token
    keypoints: int
    mean: np.ndarray  # (1, D) float32
    std: np.ndarray  # (1, D) float32
    weight: torch.Tensor  # (9 D, keypoints * sub)
    bias: torch.Tensor


def pose_probe(train_tokens: np.ndarray, train_keypoints: np.ndarray, test_tokens: np.ndarray,
               image_hw: tuple[int, int], settings: ProbeSettings = ProbeSettings()) -> dict:
    """Tokens (N, P, D) of images `image_hw`, keypoints (N, 17, 3) in their pixels -> predicted keypoints
    (n_test, 17, 3) x, y, peak and person scores (n_test,)."""
    return predict_pose(fit_pose_probe([(train_tokens, train_keypoints)], image_hw, settings), test_tokens, settings)


def fit_pose_probe(chunks: Iterable[tuple[np.ndarray, np.ndarray]], image_hw: tuple[int, int],
                   settings: ProbeSettings = ProbeSettings()) -> PoseProbe:
    """The probe fitted on chunks of (tokens (n, P, D), keypoints (n, K, 3) in pixels of `image_hw`), each
    used once and let go: only the sums of `_StreamedPoseSums` are kept, never the tokens of every image."""
    sums = None
    with _torch_threads(settings.threads):
        for tokens, keypoints in chunks:
            if sums is None:
                sums = _StreamedPoseSums(tokens, keypoints.shape[1], image_hw)
            for rows in _chunks(len(tokens)):
                sums.add(tokens[rows], keypoints[rows])
        if sums is None:
            raise ValueError("no training images for the pose probe")
        return sums.probe(settings.l2)


def predict_pose(probe: PoseProbe, tokens: np.ndarray, settings: ProbeSettings = ProbeSettings()) -> dict:
    """{keypoints (n, K, 3): x, y in pixels of `probe.image_hw` and the peak; scores (n,): person scores}."""
    from clasp.evaluation.heatmaps import decode, person_score, to_input

    (gh, gw), (sy, sx), k = probe.grid, probe.sub, probe.keypoints
    with _torch_threads(settings.threads):
        predicted = np.concatenate([(_neighbourhoods(tokens[rows], probe.mean, probe.std, probe.grid) @ probe.weight
                                     + probe.bias).numpy() for rows in _chunks(len(tokens))])
    blocks = predicted.reshape(len(tokens), gh, gw, k, sy, sx).transpose(0, 3, 1, 4, 2, 5)
    coords, peaks = decode(blocks.reshape(len(tokens), k, gh * sy, gw * sx))
    keypoints = np.concatenate([to_input(coords, probe.image_hw), peaks[..., None]], -1)
    return {"keypoints": keypoints, "scores": person_score(peaks)}


POSE_CHUNK = 64  # images whose neighbourhood features are built at once (memory, not results)


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + POSE_CHUNK, n)) for start in range(0, n, POSE_CHUNK)]


def _neighbourhoods(tokens: np.ndarray, mean: np.ndarray, std: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(n * P, 9 D): every standardised token with its 3 x 3 neighbours on the grid (zeros beyond the border)."""
    x = torch.from_numpy(((tokens - mean) / std).astype(np.float32))
    x = x.transpose(1, 2).reshape(len(tokens), -1, *grid)
    return F.unfold(x, kernel_size=3, padding=1).transpose(1, 2).reshape(-1, 9 * tokens.shape[2])


def _token_targets(keypoints: np.ndarray, image_hw: tuple[int, int], grid: tuple[int, int],
                   sub: tuple[int, int]) -> torch.Tensor:
    """(n * P, K * sy * sx): each token's own block of every keypoint's target heat map."""
    from clasp.evaluation.heatmaps import encode

    maps, _ = encode(np.asarray(keypoints, np.float64), image_hw)
    n, k = maps.shape[:2]
    blocks = maps.reshape(n, k, grid[0], sub[0], grid[1], sub[1]).transpose(0, 2, 4, 1, 3, 5)
    return torch.from_numpy(np.ascontiguousarray(blocks).reshape(n * grid[0] * grid[1], -1))


class _StreamedPoseSums:
    """The ridge sums of the pose probe over chunks, for features standardised by the mean and spread of
    *all* training tokens, which are known only once the last chunk is in.

    Rows are built with a provisional standardisation, the first chunk's mean c and spread s0 (so their
    float32 products stay well scaled), and carry 9 more columns: which of the 3 x 3 neighbours lie inside
    the grid. With the final mean m and spread s, a neighbour inside the grid is r s0 / s - (m - c) / s and
    one outside stays 0: the final rows are a linear map of the provisional ones, and so are their sums
    (`_PoseMoments.mapped`). One chunk or many gives the same probe, to float rounding."""

    def __init__(self, first: np.ndarray, keypoints: int, image_hw: tuple[int, int]) -> None:
        from clasp.evaluation.features import patch_grid
        from clasp.evaluation.heatmaps import heatmap_hw

        self.image_hw, self.keypoints, dim = tuple(image_hw), keypoints, first.shape[2]
        self.grid, (hh, hw) = patch_grid(first.shape[1], image_hw), heatmap_hw(image_hw)
        self.sub = (hh // self.grid[0], hw // self.grid[1])
        self.centre, self.spread = _scale(first.reshape(-1, dim))
        self.inside = F.unfold(torch.ones(1, 1, *self.grid), kernel_size=3, padding=1)[0].T.contiguous()  # (P, 9)
        self.shifted_sum, self.shifted_squares, self.tokens = np.zeros(dim), np.zeros(dim), 0
        self.moments = _PoseMoments()

    def add(self, tokens: np.ndarray, keypoints: np.ndarray) -> None:
        shifted = tokens.reshape(-1, tokens.shape[2]).astype(np.float64) - self.centre
        self.shifted_sum += shifted.sum(0)
        self.shifted_squares += np.square(shifted).sum(0)
        self.tokens += len(shifted)
        x = _neighbourhoods(tokens, self.centre, self.spread, self.grid)
        self.moments.add(torch.cat([x, self.inside.repeat(len(tokens), 1)], 1),
                         _token_targets(keypoints, self.image_hw, self.grid, self.sub))

    def probe(self, l2: float) -> PoseProbe:
        """The ridge solution for the standardisation of all tokens seen (`_scale`'s rule, in float64)."""
        shift = self.shifted_sum / self.tokens
        std = np.sqrt(np.maximum(self.shifted_squares / self.tokens - shift ** 2, 0.0))
        std[std < 1e-6] = 1.0
        mean, std = (self.centre + shift).astype(np.float32), std[None].astype(np.float32)
        scale = np.repeat(self.spread[0] / std[0], 9)  # feature d * 9 + k is neighbour k of token dimension d
        offset = np.repeat((mean[0] - self.centre[0]) / std[0], 9)
        columns = np.arange(len(offset))
        inside = torch.zeros(9, len(offset), dtype=torch.float64)
        inside[columns % 9, columns] = torch.from_numpy(offset.astype(np.float64))
        weight, bias = self.moments.mapped(torch.from_numpy(scale.astype(np.float64)), inside).ridge(l2)
        return PoseProbe(self.image_hw, self.grid, self.sub, self.keypoints, mean, std, weight, bias)


class _PoseMoments:
    """Sums that ridge regression needs, gathered chunk by chunk: x'x, x'y, the column sums, the row count."""

    def __init__(self) -> None:
        self.xx = self.xy = self.x_sum = self.y_sum = None
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        parts = (x.T @ x, x.T @ y, x.sum(0), y.sum(0))
        if self.xx is None:
            self.xx, self.xy, self.x_sum, self.y_sum = (p.double() for p in parts)
        else:
            for name, part in zip(("xx", "xy", "x_sum", "y_sum"), parts):
                setattr(self, name, getattr(self, name) + part.double())
        self.rows += len(x)

    def mapped(self, scale: torch.Tensor, shift: torch.Tensor) -> "_PoseMoments":
        """The sums of rows z = x[:F] * scale - x[F:] @ shift, with F = len(scale) and x[F:] the last
        len(shift) columns; computed from these sums alone."""
        f, xx = len(scale), self.xx
        cross = (xx[:f, f:] * scale[:, None]) @ shift  # sum of (x[:F] * scale)' (x[F:] @ shift)
        out = _PoseMoments()
        out.xx = xx[:f, :f] * scale[:, None]
        out.xx.mul_(scale[None, :]).sub_(cross).sub_(cross.T).addmm_(shift.T, xx[f:, f:] @ shift)
        out.xy = self.xy[:f] * scale[:, None] - shift.T @ self.xy[f:]
        out.x_sum = self.x_sum[:f] * scale - self.x_sum[f:] @ shift
        out.y_sum, out.rows = self.y_sum, self.rows
        return out

    def ridge(self, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """argmin over (W, b) of mean_rows |xW + b - y|^2 / 2 + l2/2 |W|^2 (b unpenalised), from the sums."""
        n = self.rows
        x_mean, y_mean = self.x_sum / n, self.y_sum / n
        covariance = self.xx / n - torch.outer(x_mean, x_mean) + l2 * torch.eye(len(x_mean), dtype=torch.float64)
        weight = torch.linalg.solve(covariance, self.xy / n - torch.outer(x_mean, y_mean))
        return weight.float(), (y_mean - x_mean @ weight).float()


def per_image_confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C, C) confusion counts of each image (rows = truth); their sum is the test set's."""
    pred, truth = np.asarray(pred, np.int64), np.asarray(truth, np.int64)
    cells = (truth * num_classes + pred).reshape(len(pred), -1) + (np.arange(len(pred)) * num_classes ** 2)[:, None]
    counts = np.bincount(cells.ravel(), minlength=len(pred) * num_classes ** 2)
    return counts.reshape(len(pred), num_classes, num_classes)


def cosine_similarity(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    q = query / (np.linalg.norm(query, axis=1, keepdims=True) + 1e-12)
    g = gallery / (np.linalg.norm(gallery, axis=1, keepdims=True) + 1e-12)
    return q @ g.T


def reid_probe(query_x: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray, gallery_x: np.ndarray,
               gallery_ids: np.ndarray, gallery_cams: np.ndarray) -> dict:
    """Cosine nearest neighbours on CLS features, scored with the Market-1501 protocol."""
    score = reid_scores(cosine_similarity(query_x, gallery_x), query_ids, query_cams, gallery_ids, gallery_cams)
    return {"mAP": score.mAP, "rank1": score.rank1, "chance_rank1": score.chance_rank1, "queries": score.queries,
            "skipped_queries": score.skipped_queries, "gallery": int(len(gallery_ids)),
            "scored": score.scored, "per_query_ap": score.per_query_ap, "per_query_rank1": score.per_query_rank1}


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
