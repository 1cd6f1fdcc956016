"""`clasp eval`: probe a frozen backbone on a synthetic world, a COCO, Market-1501 or MSMT17 folder.

`--data` is recognised by its content: a folder with `truth/annotations.jsonl`
is a synthetic world (all tasks; pose only when it has keypoints); one with
`annotations/person_keypoints_{train,val}2017.json` is COCO (pose only:
`clasp.evaluation.coco_probe`); a folder with `query/` or
`bounding_box_test/` is Market-1501 and one with `list_query.txt` MSMT17 (both
re-ID only). Results are a nested dict
(also written as JSON) and a plain-text table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from clasp.datasets.attribute_data import binary_attribute_names, binary_attributes
from clasp.datasets.coco_keypoints import is_coco_keypoints, read_coco_pose
from clasp.evaluation.config import TASK_PROMPT_MODES, TASKS, EvalConfig  # the settings of `clasp eval`
from clasp.evaluation.errors import EvalInputError
from clasp.evaluation.features import (FeatureExtractor, extract_features, extract_prompted_features,
                                       finite_features)
from clasp.datasets.label_grid import majority_downsample
from clasp.datasets.market1501 import is_market1501, read_market1501
from clasp.datasets.msmt17 import is_msmt17, read_msmt17
from clasp.evaluation.intervals import identity_bootstrap
from clasp.evaluation.metrics import (ATTRIBUTE_UNDEFINED, NO_ATTRIBUTE, NO_PART, PART_UNDEFINED,
                                      mean_accuracy, mean_iou)
from clasp.evaluation.results_json import write_results
from clasp.evaluation.undefined import PerItem, explain, failure_line, reason_of
from clasp.evaluation.probes import (
    attribute_probe, identity_split, parsing_probe, pose_probe, query_gallery_split, reid_probe,
)
from clasp.datasets.truth import SynthTruth
from clasp.pretraining.vit import PromptedViT, TaskBackbone
from clasp.store import Vocabulary
from clasp.common.percent import percent

# `--task-prompt per-probe`: each probe reads the backbone through its own task prompt,
# the way a CLASP model is meant to serve tasks of different granularity.
PROBE_PROMPTS = {"attributes": "attribute", "parsing": "part", "reid": "instance", "pose": "part"}
PATCH_TASKS = ("parsing", "pose")  # probes that read the patch tokens


def data_kind(data: Path) -> str:
    if (data / "truth" / "annotations.jsonl").is_file():
        return "synth"
    if is_coco_keypoints(data):
        return "coco"
    if is_market1501(data):
        return "market1501"
    if is_msmt17(data):
        return "msmt17"
    if not data.is_dir():
        raise EvalInputError(f"{data}: folder does not exist")
    raise EvalInputError(f"{data}: no ground truth (neither truth/annotations.jsonl of `clasp synth` "
                         "nor COCO's annotations/person_keypoints_*2017.json nor Market-1501's query/ and "
                         "bounding_box_test/ nor MSMT17's list_query.txt)")


def resolve_tasks(kind: str, tasks: tuple[str, ...] | None, data: Path) -> tuple[str, ...]:
    supported = {"synth": TASKS, "coco": ("pose",)}.get(kind, ("reid",))
    if tasks is None:
        return supported
    if not tasks:
        raise EvalInputError("--tasks is empty; give a comma-separated subset of "
                             f"{','.join(TASKS)}, or leave the option out for every task the data supports")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalInputError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    unsupported = [t for t in tasks if t not in supported]
    if unsupported:
        raise EvalInputError(f"{data}: a {kind} folder has no ground truth for {', '.join(unsupported)} "
                             f"({', '.join(supported)} only)")
    return tuple(tasks)


def evaluate(config: EvalConfig, extractor: FeatureExtractor | None = None,
             log: Callable[[str], None] = lambda _: None) -> dict:
    """Run the probes; `extractor` overrides loading `config.backbone` (tests, baselines)."""
    data = Path(config.data)
    kind = data_kind(data)
    tasks = resolve_tasks(kind, config.tasks, data)
    if config.detections is not None and kind != "coco":
        raise EvalInputError(f"--detections {config.detections}: person boxes are for a COCO folder; "
                             f"{data} is a {kind} folder")
    if isinstance(extractor, dict) and config.tasks is None:  # extractors given per probe: those probes run
        tasks = tuple(t for t in tasks if t in extractor)
    readers = {"synth": SynthTruth.load, "market1501": read_market1501, "msmt17": read_msmt17,
               "coco": lambda root: read_coco_pose(root, config.detections)}
    source = readers[kind](data)
    if kind == "synth" and source.keypoints is None and "pose" in tasks:
        tasks = _without_pose(config, tasks, data, log)
    if extractor is None:
        extractor = load_extractors(config, tasks)
    precision = feature_precision(config.precision)
    log(precision.line())
    if precision.warning:
        log(precision.warning)
    results: dict = {"backbone": str(config.backbone), "data": str(data), "kind": kind, "tasks": list(tasks),
                     "precision": precision.record(), "task_prompt": config.task_prompt}
    if kind == "synth":
        results.update(_evaluate_synth(source, tasks, extractor, config, precision.autocast_dtype, log))
    elif kind == "coco":
        from clasp.evaluation.coco_probe import evaluate_coco

        pose = extractor["pose"] if isinstance(extractor, dict) else extractor
        results.update(evaluate_coco(source, pose, config, precision.autocast_dtype, log))
    else:
        reid = extractor["reid"] if isinstance(extractor, dict) else extractor
        results.update(_evaluate_market(source, reid, config, precision.autocast_dtype, log))
    if config.out is not None:
        write_results(config.out, results)
    return results


def load_extractors(config: EvalConfig, tasks: tuple[str, ...]) -> FeatureExtractor | dict[str, FeatureExtractor]:
    """One frozen backbone, or one per probe with its matching task prompt (`task_prompt="per-probe"`)."""
    from clasp.evaluation.frozen_backbone import load_frozen_backbone

    if config.task_prompt not in TASK_PROMPT_MODES:
        raise EvalInputError(f"unknown task prompt mode {config.task_prompt!r}; choose {' or '.join(TASK_PROMPT_MODES)}")
    if config.task_prompt == "export":
        return load_frozen_backbone(config.backbone)
    backbone = load_frozen_backbone(config.backbone).backbone  # one set of weights, read through each probe's prompt
    have = list(backbone.config.tasks)
    missing = [PROBE_PROMPTS[t] for t in tasks if backbone.config.moe_layers and PROBE_PROMPTS[t] not in have]
    if missing:
        raise EvalInputError(f"{config.backbone}: no task prompt {missing[0]!r}; this backbone has {have}")
    return {task: backbone.for_task(PROBE_PROMPTS[task]) for task in tasks}


def feature_precision(requested: str):
    """The precision of feature extraction on this CPU (`clasp.hardware` rule); bad values as EvalInputError."""
    from clasp.hardware import PrecisionError, probe_capability, resolve_precision

    try:
        return resolve_precision(requested, probe_capability("cpu"))
    except PrecisionError as exc:
        raise EvalInputError(str(exc)) from None


def _evaluate_synth(truth: SynthTruth, tasks, extractor, config: EvalConfig, autocast, log) -> dict:
    vocab = Vocabulary.default()
    start = time.perf_counter()
    features = _features_per_probe(extractor, tasks, [truth.images_dir / p for p in truth.paths], config, autocast, log)
    feats = features[tasks[0]]
    out: dict = {"images": len(truth), "feature_dim": int(feats.cls.shape[1]),
                 "seconds": {"features": time.perf_counter() - start}}
    train, test = identity_split(truth.identity)
    out["split"] = _split_summary(truth, train, test)
    probes = (  # (task, what the log says as it starts, its scores)
        ("attributes", "attribute probe", lambda: _attribute_scores(truth, features["attributes"], train, test, vocab, config)),
        ("parsing", "parsing probe", lambda: _parsing_scores(truth, features["parsing"], train, test, vocab, config)),
        ("reid", None, lambda: _reid_scores(truth, features["reid"], test)),
        ("pose", "pose probe", lambda: _pose_scores(truth, features["pose"], train, test, config)),
    )
    for task, message, scores in probes:
        if task in tasks:
            t0 = time.perf_counter()
            if message is not None:
                log(message)
            out[task] = scores()
            out["seconds"][task] = time.perf_counter() - t0
    return out


def _split_summary(truth: SynthTruth, train: np.ndarray, test: np.ndarray) -> dict:
    return {"rule": "lower half of sorted identity numbers trains the probes; the rest test",
            "train_images": int(train.sum()), "test_images": int(test.sum()),
            "train_identities": int(len(np.unique(truth.identity[train]))),
            "test_identities": int(len(np.unique(truth.identity[test])))}


def _attribute_scores(truth: SynthTruth, feats, train: np.ndarray, test: np.ndarray, vocab: Vocabulary,
                      config: EvalConfig) -> dict:
    """The linear attribute probe: mA with its identity-bootstrap interval, per attribute, per group."""
    labels = truth.attribute_indices(vocab)
    sizes = [len(g.values) for g in vocab.attributes]
    res = attribute_probe(feats.cls[train], labels[train], feats.cls[test], labels[test], sizes, config.probe)
    names = binary_attribute_names([(g.group, [v.name for v in g.values]) for g in vocab.attributes])
    predicted, actual = binary_attributes(res["pred"], sizes), binary_attributes(labels[test], sizes)
    interval = identity_bootstrap(truth.identity[test], lambda rows: mean_accuracy(predicted[rows], actual[rows]))
    return {
        "mA": explain(res["mA"], NO_ATTRIBUTE),
        "mA_interval": interval.to_dict(),
        "per_attribute": PerItem(names, res["per_attribute"], ATTRIBUTE_UNDEFINED),
        "group_accuracy": {g.group: float(a) for g, a in zip(vocab.attributes, res["group_accuracy"])},
    }


def _parsing_scores(truth: SynthTruth, feats, train: np.ndarray, test: np.ndarray, vocab: Vocabulary,
                    config: EvalConfig) -> dict:
    """The parsing probe on the patch grid: mIoU on the grid and in pixels, IoU per part."""
    if truth.part_names != vocab.part_names:
        raise EvalInputError(f"{truth.parts_file}: parts {truth.part_names} differ from the vocabulary's {vocab.part_names}")
    masks = truth.read_masks()
    grid_masks = majority_downsample(masks, feats.grid, vocab.num_parts)
    res = parsing_probe(feats.patches[train], grid_masks[train], feats.patches[test], grid_masks[test],
                        vocab.num_parts, masks[test], config.probe)
    per_image = res["grid_confusion_per_image"]
    interval = identity_bootstrap(truth.identity[test], lambda rows: mean_iou(per_image[rows].sum(0)))
    return {
        "grid": list(feats.grid),
        "mIoU_grid": explain(res["mIoU_grid"], NO_PART), "mIoU_pixel": explain(res["mIoU_pixel"], NO_PART),
        "mIoU_grid_interval": interval.to_dict(),
        "iou_grid": PerItem(vocab.part_names, res["iou_grid"], PART_UNDEFINED),
        "iou_pixel": PerItem(vocab.part_names, res["iou_pixel"], PART_UNDEFINED),
    }


def _reid_scores(truth: SynthTruth, feats, test: np.ndarray) -> dict:
    """Re-identification among the test identities, with intervals."""
    query, gallery = query_gallery_split(truth.identity, truth.camera, np.flatnonzero(test))
    reid = reid_probe(feats.cls[query], truth.identity[query], truth.camera[query],
                      feats.cls[gallery], truth.identity[gallery], truth.camera[gallery])
    reid.update(reid_intervals(reid, truth.identity[query]))
    reid["rule"] = "test identities; first image of each (identity, camera) is a query, the rest gallery"
    return reid


def _without_pose(config: EvalConfig, tasks: tuple[str, ...], data: Path, log) -> tuple[str, ...]:
    """A world drawn before keypoints existed: pose is skipped when not asked for, refused when asked for."""
    if config.tasks is not None:
        raise EvalInputError(f"{data}: the world has no keypoints (drawn before `clasp synth` recorded them); "
                             "draw it again for pose")
    log("no pose probe: the world has no keypoints")
    return tuple(t for t in tasks if t != "pose")


def _pose_scores(truth: SynthTruth, feats, train: np.ndarray, test: np.ndarray, config: EvalConfig) -> dict:
    """OKS AP, AP50, AP75 and AR of the pose probe, AP with its identity-bootstrap interval."""
    from clasp.evaluation.oks import NO_KEYPOINT, oks, single_person_ap
    from clasp.common.person_size import PERSON_HW

    res = pose_probe(feats.patches[train], truth.keypoints[train], feats.patches[test], PERSON_HW, config.probe)
    areas = (truth.read_masks(np.flatnonzero(test)) > 0).sum((1, 2))
    similarity, scores = oks(res["keypoints"], truth.keypoints[test], areas), res["scores"]
    interval = identity_bootstrap(truth.identity[test], lambda rows: single_person_ap(similarity[rows], scores[rows])[0])
    ap, ar = single_person_ap(similarity, scores)
    return {"ap": explain(ap, NO_KEYPOINT), "ap_interval": interval.to_dict(),
            "ap50": explain(single_person_ap(similarity, scores, (0.5,))[0], NO_KEYPOINT),
            "ap75": explain(single_person_ap(similarity, scores, (0.75,))[0], NO_KEYPOINT),
            "ar": explain(ar, NO_KEYPOINT), "persons": int(test.sum()),
            "rule": "linear probe on the patch tokens to heat maps; OKS AP as COCOeval scores one person per image"}


def _features_per_probe(extractor, tasks, paths, config: EvalConfig, autocast, log) -> dict:
    """Features for each probe. Probes that read one backbone through their own task prompts share one
    pass over the images (`extract_prompted_features`); other probes that share an extractor share its pass."""
    extractors = extractor if isinstance(extractor, dict) else {task: extractor for task in tasks}
    prompted = _prompted_backbone(extractors, tasks)
    if prompted is not None:
        prompts = {task: extractors[task].task for task in tasks}
        log(f"features of {len(paths)} images ({', '.join(dict.fromkeys(prompts.values()))} prompts, one pass)")
        found = extract_prompted_features(prompted, prompts, paths, config.batch_size,
                                          keep_patches=[t for t in tasks if t in PATCH_TASKS], autocast=autocast)
        return {task: finite_features(found[task], config.backbone) for task in tasks}
    done: dict[int, object] = {}
    for task in tasks:
        chosen = extractors[task]
        if id(chosen) not in done:
            log(f"features of {len(paths)} images" + (f" ({PROBE_PROMPTS[task]} prompt)" if extractor is not chosen else ""))
            patches = any(t in PATCH_TASKS and extractors[t] is chosen for t in tasks)
            found = extract_features(chosen, paths, config.batch_size, keep_patches=patches, autocast=autocast)
            done[id(chosen)] = finite_features(found, config.backbone)
    return {task: done[id(extractors[task])] for task in tasks}


def _prompted_backbone(extractors: dict, tasks) -> PromptedViT | None:
    """The one backbone behind every probe's extractor when each is that backbone fixed to a task prompt."""
    chosen = [extractors[task] for task in tasks]
    if len(chosen) < 2 or not all(isinstance(e, TaskBackbone) for e in chosen):
        return None
    backbones = {id(e.backbone) for e in chosen}
    return chosen[0].backbone if len(backbones) == 1 else None


def reid_intervals(reid: dict, query_identities: np.ndarray) -> dict:
    """mAP and rank-1 intervals over the query identities; removes the per-query arrays from `reid`."""
    scored, ap, hit = reid.pop("scored"), reid.pop("per_query_ap"), reid.pop("per_query_rank1")
    identities = np.asarray(query_identities)[scored]
    intervals = {"mAP_interval": identity_bootstrap(identities, lambda rows: ap[rows].mean()),
                 "rank1_interval": identity_bootstrap(identities, lambda rows: hit[rows].mean())}
    why = reason_of(reid["mAP"])
    return {name: {k: explain(v, why) for k, v in interval.to_dict().items()} for name, interval in intervals.items()}


def unscored_main_metric(results: dict) -> str | None:
    """The error line's text when the only metric of a folder had no value: re-ID on Market-1501 or MSMT17
    scored no query, or pose on COCO no person."""
    if results["kind"] == "synth":
        return None
    if results["kind"] == "coco":
        return failure_line(results["pose"], "ap", results["data"])
    reid = results["reid"]
    return failure_line(reid, "mAP", results["data"], f" ({reid['skipped_queries']} queries, all skipped)")


def _evaluate_market(market, extractor, config: EvalConfig, autocast, log) -> dict:
    start = time.perf_counter()
    log(f"features of {len(market.query)} queries and {len(market.gallery)} gallery images")
    q = finite_features(extract_features(extractor, market.query.paths, config.batch_size, keep_patches=False,
                                         autocast=autocast), config.backbone)
    g = finite_features(extract_features(extractor, market.gallery.paths, config.batch_size, keep_patches=False,
                                         autocast=autocast), config.backbone)
    out: dict = {"images": len(market.query) + len(market.gallery), "feature_dim": int(q.cls.shape[1]),
                 "seconds": {"features": time.perf_counter() - start}}
    t0 = time.perf_counter()
    out["reid"] = reid_probe(q.cls, market.query.identity, market.query.camera,
                             g.cls, market.gallery.identity, market.gallery.camera)
    out["reid"].update(reid_intervals(out["reid"], market.query.identity))
    out["reid"].update(market.dropped())
    out["seconds"]["reid"] = time.perf_counter() - t0
    return out


def format_table(results: dict) -> str:
    """The headline numbers as an aligned two-column table."""
    rows = []
    if "attributes" in results:
        rows.append(("attributes mA", results["attributes"]["mA"]))
    if "parsing" in results:
        rows.append((f"parsing mIoU ({'x'.join(map(str, results['parsing']['grid']))} grid)", results["parsing"]["mIoU_grid"]))
        rows.append(("parsing mIoU (pixels)", results["parsing"]["mIoU_pixel"]))
    if "reid" in results:
        r = results["reid"]
        rows.append((f"re-ID mAP ({r['queries']} queries, {r['gallery']} gallery)", r["mAP"]))
        rows.append(("re-ID rank-1", r["rank1"]))
    if "pose" in results:
        pose = results["pose"]
        rows.append((f"pose AP (OKS, {pose.get('persons', pose.get('instances_val'))} persons)", pose["ap"]))
    width = max((len(name) for name, _ in rows), default=10)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    lines += [f"{name.ljust(width)}  {percent(value, 6, 2)}" for name, value in rows]
    return "\n".join(lines)
