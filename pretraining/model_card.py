"""README.md of an export folder: the model card the Hugging Face Hub shows and indexes.

YAML front matter first (library_name, license, pipeline_tag, tags: what the
hub reads for search and filters), then what a user needs before trusting the
weights: how to load them, the architecture, the task prompts, the training
data, the training (steps, batch, objectives and their weights) and the
`clasp eval` scores.

Every fact comes from a file, never from a guess:

- the export's own config.json (architecture, task, step);
- the checkpoint's saved run config (store path, steps, batch, loss weights);
- the store's manifest.json, when the saved path still reaches a store whose
  content fingerprint is the one the run trained on (rows, the labeling CLIP);
  otherwise the card says the store was not reachable, or has changed;
- the results.json of `clasp eval` given with `--eval-results`. Nothing is
  picked up on its own: a results file found beside an export may score an
  earlier export written into the same folder.

The license is the clasp repository's (the kind of its LICENSE file); the card
says that weights trained on images under other terms take those terms.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from clasp.errors import InputError
from clasp.pretraining.run_state import data_fingerprint
from clasp.store import Manifest, StoreError
from clasp.common.json_files import read_json
from clasp.common.percent import percent

LICENSE_FILE = Path(__file__).resolve().parents[1] / "LICENSE"  # the repository root is the package
# The opening words of a LICENSE file (lower case, spaces collapsed) and the hub's id of that license.
LICENSE_KINDS = (("apache license version 2.0", "apache-2.0"), ("mit license", "mit"),
                 ("bsd 3-clause license", "bsd-3-clause"))
TAGS = ("clasp", "vision-transformer", "mixture-of-experts", "human-centric", "person", "feature-extraction")
# (section of results.json, metric, its name in the card)
HEADLINE_METRICS = (("attributes", "mA", "attributes mA"), ("parsing", "mIoU_grid", "parsing mIoU (patch grid)"),
                    ("parsing", "mIoU_pixel", "parsing mIoU (pixels)"), ("reid", "mAP", "re-ID mAP"),
                    ("reid", "rank1", "re-ID rank-1"))


class EvalResultsError(InputError, ValueError):
    """A file given as `clasp eval` results that is not one; the message names the file."""


def license_id() -> str:
    """The hub's id of the repository's license: from the LICENSE file, else the installed package's metadata."""
    try:
        head = " ".join(LICENSE_FILE.read_text(encoding="utf-8")[:400].replace(",", " ").split()).lower()
    except OSError:
        head = ""
    for words, hub_id in LICENSE_KINDS:
        if words in head:
            return hub_id
    try:
        declared = (importlib.metadata.metadata("clasp").get("License") or "").lower()
    except importlib.metadata.PackageNotFoundError:
        declared = ""
    return declared if declared in {hub_id for _, hub_id in LICENSE_KINDS} else "other"


def read_eval_results(path: Path) -> dict:
    """The results.json of `clasp eval` at `path`; anything else is refused, naming the file."""
    results = read_json(path, EvalResultsError, what="eval results")
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), list) or "kind" not in results:
        raise EvalResultsError(f"{path}: not a results file of `clasp eval` (no 'kind' and 'tasks')")
    return results


def render_card(description: dict, run_config: dict, params: int, evaluation: dict | None = None,
                evaluation_path: Path | None = None) -> str:
    """The whole README.md: front matter, then one section per subject."""
    sections = [front_matter(), title(description), usage(description), architecture(description, params),
                task_prompts(description), training_data(run_config), training(description, run_config),
                scores(evaluation, evaluation_path), files(description)]
    return "\n\n".join(sections) + "\n"


def front_matter() -> str:
    tags = "\n".join(f"- {tag}" for tag in TAGS)
    return (f"---\nlibrary_name: clasp\nlicense: {license_id()}\npipeline_tag: image-feature-extraction\n"
            f"tags:\n{tags}\n---")


def part(data: Any, key: str) -> dict:
    """data[key] where both are mappings, else {}: an older or hand-edited run config may lack a section."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {name} | {str(value).replace('|', chr(92) + '|')} |" for name, value in rows]
    return "\n".join(lines)


def title(description: dict) -> str:
    arch = description["architecture"]
    return (f"# CLASP backbone: ViT {arch['dim']} wide, {arch['depth']} blocks, `{description['task']}` prompt\n\n"
            "A vision transformer pre-trained with CLASP (self-distillation plus CLIP pseudo-labels of body parts "
            "and attributes) on person crops. It maps an image to one CLS feature and one feature per patch.")


def usage(description: dict) -> str:
    h, w = description["image_hw"]
    p = description["architecture"]["patch_size"]
    return ("## Use\n\n```python\nfrom clasp.pretraining import load_backbone\n\n"
            'backbone = load_backbone("OWNER/NAME")  # this repository\'s hub id, or the folder of this card\n'
            f"cls, patches = backbone(images)  # images (B, 3, {h}, {w}) RGB, uint8 or float in [0, 1]\n```\n\n"
            f"`cls` is (B, {description['feature_dim']}), `patches` (B, {(h // p) * (w // p)}, "
            f"{description['feature_dim']}): the {h // p}×{w // p} grid, row-major. ImageNet normalisation happens "
            "inside. `task=\"...\"` picks another task prompt; `img_hw=(256, 192)` (sides multiples of "
            f"{p}) resizes the position embedding bicubically for pose or re-ID crops; `revision=` pins a hub commit.")


def architecture(description: dict, params: int) -> str:
    arch = description["architecture"]
    rows = [("width, depth, heads", f"{arch['dim']}, {arch['depth']}, {arch['heads']}"),
            ("patch, input", f"{arch['patch_size']}, {arch['img_hw'][0]}×{arch['img_hw'][1]}"),
            ("MLP ratio", arch["mlp_ratio"]),
            ("prompt-controlled MoE", f"last {count(arch['moe_layers'], 'block')}, {arch['experts']} experts, "
             f"top-{arch['top_k']}" if arch["moe_layers"] else "none (a plain ViT)"),
            ("parameters", f"{params:,}")]
    return "## Architecture\n\n" + table(rows)


def task_prompts(description: dict) -> str:
    arch = description["architecture"]
    if not arch["moe_layers"]:
        return "## Task prompts\n\nNone: without MoE blocks every task reads the same features."
    names = ", ".join(f"**`{t}`** (this export's)" if t == description["task"] else f"`{t}`" for t in arch["tasks"])
    return (f"## Task prompts\n\n{names}. A prompt enters the MoE blocks as an extra token and as the router's "
            f"second input; the weights are the {description['weights']}'s.")


def training_data(run_config: dict) -> str:
    store, fingerprint = part(run_config, "config").get("shards"), part(run_config, "derived").get("data")
    rows: list[tuple[str, Any]] = [("store", f"`{store}`"), ("content fingerprint", fingerprint or "not recorded")]
    manifest, why = reachable_manifest(store, fingerprint)
    if manifest is None:
        return "## Training data\n\n" + table(rows) + f"\n\nRows and the labeling CLIP are not known here: {why}."
    clip = manifest.clip
    rows += [("rows", f"{manifest.total_rows:,} in {count(len(manifest.shards), 'shard')}"),
             ("labeled by", f"CLIP `{clip.model}`" + (f" (revision `{clip.revision}`)" if clip.revision else "")
              + f", {clip.dense_mode} dense features at {clip.input_hw[0]}×{clip.input_hw[1]}"
              + (f", {clip.precision}" if clip.precision else "")),
             ("part classes", ", ".join(manifest.vocab.part_names)),
             ("attributes", f"{manifest.vocab.num_attributes} values in {len(manifest.vocab.attributes)} groups"),
             ("label grid", f"{manifest.label_grid[0]}×{manifest.label_grid[1]}")]
    return "## Training data\n\n" + table(rows)


def reachable_manifest(store: str | None, fingerprint: str | None) -> tuple[Manifest | None, str]:
    """The manifest of the store the run trained on, or None and why not."""
    if not store:
        return None, "the run config names no store"
    try:
        manifest = Manifest.load(store)
    except (StoreError, OSError, ValueError) as exc:
        return None, f"its manifest was not reachable at export time ({' '.join(str(exc).split())[:200]})"
    if fingerprint is not None and data_fingerprint(manifest) != fingerprint:
        return None, f"the store at that path has changed since training (fingerprint {data_fingerprint(manifest)})"
    return manifest, ""


def training(description: dict, run_config: dict) -> str:
    settings, derived = part(run_config, "config"), part(run_config, "derived")
    loss = part(part(run_config, "model"), "loss") or settings
    source = description["source"]
    rows = [("steps", f"{source['step']} of {derived.get('total_steps', '?')}"),
            ("images per step", derived.get("total_batch", "?")),
            ("crops per image", f"{settings.get('global_crops', '?')} global, {settings.get('local_crops', '?')} local"),
            ("peak learning rate", derived.get("peak_lr", "?")),
            ("precision", part(run_config, "hardware").get("precision", "?")),
            ("objective", objective(loss))]
    return "## Training\n\n" + table(rows)


def objective(loss: dict) -> str:
    """total = DINO + w·part + w·attribute + w·balance, with the run's weights; a zero weight is left out."""
    terms = ["DINO self-distillation"]
    for key, name in (("w_part", "per-token part classification"), ("w_attr", "attribute prediction"),
                      ("w_balance", "MoE load balance")):
        weight = loss.get(key)
        if not isinstance(weight, (int, float)):
            terms.append(f"? · {name}")
        elif weight:
            terms.append(f"{weight:g} · {name}")
    return " + ".join(terms)


def scores(evaluation: dict | None, path: Path | None) -> str:
    if evaluation is None:
        return ("## Evaluation\n\nNo scores were given to this export: `clasp eval --backbone DIR --out "
                "results.json`, then `clasp export ... --eval-results results.json` adds them here.")
    rows = []
    for section, metric, name in HEADLINE_METRICS:
        values = evaluation.get(section)
        if isinstance(values, dict) and metric in values:
            rows.append((name, score(values[metric], values.get(f"{metric}_interval"))))
    head = (f"## Evaluation\n\n`clasp eval` of `{evaluation.get('backbone', '?')}` on `{evaluation.get('data', '?')}` "
            f"({evaluation['kind']}; task prompts: {evaluation.get('task_prompt', 'export')}; from `{path}`), "
            "frozen backbone, linear probes and cosine kNN re-ID:")
    return head + "\n\n" + (table(rows) if rows else "No headline metric in that file.")


def score(value: Any, interval: Any) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(interval, dict) and isinstance(interval.get("low"), (int, float)) \
            and isinstance(interval.get("high"), (int, float)):
        return f"{percent(value, 0, 2)} % (95 % interval {percent(interval['low'], 0, 2)}–{percent(interval['high'], 0, 2)})"
    return f"{percent(value, 0, 2)} %"


def files(description: dict) -> str:
    return ("## Files\n\n- `model.safetensors`: the backbone's weights only, keys as in `PromptedViT.state_dict()`;\n"
            f"- `config.json`: format `{description['format']}` version {description['version']}, the architecture, "
            "task, input size and normalisation: what `load_backbone` reads;\n"
            f"- written by clasp {description['clasp_version']} from checkpoint "
            f"`{description['source']['checkpoint']}`.\n\n"
            f"The license above is clasp's. Weights trained on images under other terms (research-only person "
            "data sets, for one) carry those terms: change `license` before publishing such weights.")
