"""`clasp export` and `load_backbone`: clean keys, same features as the trained teacher, no training code needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, load_model

from clasp.cli import main
from clasp.pretraining import load_backbone
from clasp.pretraining.backbone import BackboneError
from clasp.pretraining.config import PretrainConfig
from clasp.pretraining.export import ExportConfig, ExportError, export_backbone
from clasp.pretraining.model import ClaspModel, ModelConfig
from clasp.pretraining.train import run_pretraining
from clasp.store import Vocabulary
from tests.conftest import TINY_RUN, write_store

TINY = {**TINY_RUN, "local_crops": 1, "num_workers": 0, "save_every": 1, "steps": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def run_dir(make_store: Callable[..., Path], tmp_path: Path) -> Path:
    """A two-step run (checkpoints at steps 1 and 2) on a small store."""
    store = make_store([9], grid=(8, 4), hw=(64, 32))
    run_pretraining(PretrainConfig(**TINY, shards=str(store), out=str(tmp_path / "run")))
    return tmp_path / "run"


def trained_model(run_dir: Path, step: int = 2) -> ClaspModel:
    folder = run_dir / "checkpoints" / f"step-{step:08d}"
    saved = json.loads((folder / "config.json").read_text())
    model = ClaspModel(ModelConfig.from_dict(saved["model"]))
    load_model(model, str(folder / "model.safetensors"))
    return model.eval()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 3, 256, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_exported_teacher_gives_the_trained_teachers_features(run_dir: Path, tmp_path: Path) -> None:
    teacher = trained_model(run_dir).teacher["backbone"]
    x = images()
    for task in ("instance", "part", "attribute"):
        backbone = load_backbone(export_backbone(ExportConfig(run=run_dir, out=tmp_path / task, task=task)))
        assert isinstance(backbone, torch.nn.Module) and not backbone.training
        with torch.no_grad():
            cls, patches = backbone(x)
            want_cls, want_patches = teacher.for_task(task)(x)
            float_cls, _ = backbone(x.float() / 255)  # float input in [0, 1] is the same picture
        assert cls.shape == (3, 32) and patches.shape == (3, 16 * 8, 32)
        torch.testing.assert_close(cls, want_cls, rtol=0, atol=0)
        torch.testing.assert_close(patches, want_patches, rtol=0, atol=0)
        torch.testing.assert_close(float_cls, cls, rtol=1e-5, atol=1e-5)
    # the task prompt matters: the same images give other features under another prompt
    with torch.no_grad():
        assert not torch.allclose(load_backbone(tmp_path / "part")(x)[0], load_backbone(tmp_path / "instance")(x)[0])
    # `clasp eval --task-prompt per-probe` reads one export through each probe's own prompt
    from clasp.evaluation.run_eval import EvalConfig, load_extractors

    per_probe = load_extractors(EvalConfig(tmp_path / "instance", tmp_path, task_prompt="per-probe"),
                                ("attributes", "parsing", "reid"))
    with torch.no_grad():
        for probe, task in (("attributes", "attribute"), ("parsing", "part"), ("reid", "instance")):
            torch.testing.assert_close(per_probe[probe](x)[0], teacher.for_task(task)(x)[0], rtol=0, atol=0)


def test_export_keys_config_and_student_choice(run_dir: Path, tmp_path: Path) -> None:
    teacher_dir = export_backbone(ExportConfig(run=run_dir, out=tmp_path / "t", task="part", checkpoint=1))
    student_dir = export_backbone(ExportConfig(run=run_dir, out=tmp_path / "s", task="part", student=True))
    weights = load_file(teacher_dir / "model.safetensors")
    assert "patch_embed.weight" in weights and "task_prompts" in weights and "moe_blocks.0.moe.router.weight" in weights
    for key in weights:
        assert not key.startswith(("teacher", "student", "module.", "_orig_mod.")), key
        assert "head" not in key and "dino_loss" not in key, key
    config = json.loads((teacher_dir / "config.json").read_text())
    assert config["format"] == "clasp-backbone" and config["version"] == 1
    assert config["task"] == "part" and config["weights"] == "teacher" and config["image_hw"] == [256, 128]
    assert config["architecture"]["dim"] == 32 and config["architecture"]["experts"] == 3
    assert config["source"]["step"] == 1
    assert config["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # the student is another network: the export really chose it
    model = trained_model(run_dir)
    student = load_file(student_dir / "model.safetensors")
    torch.testing.assert_close(student["norm.weight"], model.student["backbone"].norm.weight.detach())
    x = images(1)
    with torch.no_grad():
        s_cls, _ = load_backbone(student_dir)(x)
        t_cls, _ = load_backbone(export_backbone(ExportConfig(run=run_dir, out=tmp_path / "t2", task="part")))(x)
    assert not torch.allclose(s_cls, t_cls)


def edit_config(path: Path, edit: Callable[[dict], None], *keys: str) -> None:
    """Apply `edit` to the part of a saved config.json under `keys`."""
    data = json.loads(path.read_text())
    part = data
    for key in keys:
        part = part[key]
    edit(part)
    path.write_text(json.dumps(data))


def older_name(architecture: dict) -> None:
    """The architecture as written before `num_experts` became `experts`."""
    architecture["num_experts"] = architecture.pop("experts")


def test_runs_and_exports_written_with_num_experts_still_load(run_dir: Path, tmp_path: Path) -> None:
    edit_config(run_dir / "checkpoints" / "step-00000002" / "config.json", older_name, "model", "vit")
    out = export_backbone(ExportConfig(run=run_dir, out=tmp_path / "old", task="instance"))
    edit_config(out / "config.json", older_name, "architecture")
    backbone = load_backbone(out)
    assert backbone.backbone.config.experts == 3
    teacher = trained_model(run_dir).teacher["backbone"].for_task("instance")
    with torch.no_grad():
        torch.testing.assert_close(backbone(images())[0], teacher(images())[0], rtol=0, atol=0)
    edit_config(out / "config.json", lambda arch: arch.update(experts=arch["num_experts"]), "architecture")
    with pytest.raises(BackboneError, match="'experts' is given twice"):
        load_backbone(out)


def test_load_backbone_needs_no_training_code(run_dir: Path, tmp_path: Path) -> None:
    out = export_backbone(ExportConfig(run=run_dir, out=tmp_path / "b", task="instance"))
    blocked = ["clasp.pretraining.model", "clasp.pretraining.train", "clasp.pretraining.stream",
               "clasp.pretraining.heads", "clasp.runs.checkpoint", "clasp.pretraining.export",
               "clasp.store.reader", "clasp.store.writer", "clasp.store.manifest", "clasp.store.schema",
               "accelerate", "h5py"]  # the store's constant PERSON_HW is allowed: it imports nothing
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "import torch\nfrom clasp.pretraining import load_backbone\n"
            f"cls, patches = load_backbone({str(out)!r})(torch.zeros(2, 3, 256, 128, dtype=torch.uint8))\n"
            "print(tuple(cls.shape), tuple(patches.shape))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 32) (2, 128, 32)"


def test_export_command_and_its_errors(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["export", str(run_dir), "--task", "attribute", "--out", str(tmp_path / "e")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "e" / "model.safetensors").is_file()
    missing = runner.invoke(main, ["export", str(run_dir), "--checkpoint", "7", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no checkpoint at step 7" in missing.output and str(run_dir) in missing.output
    assert "Traceback" not in missing.output
    nothing = runner.invoke(main, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "y")])
    assert nothing.exit_code == 2 and "run folder not found" in nothing.output


def test_export_refuses_a_task_the_run_did_not_train(tmp_path: Path, make_store: Callable[..., Path]) -> None:
    store = make_store([6], grid=(8, 4), hw=(64, 32))
    run_pretraining(PretrainConfig(**{**TINY, "steps": 1, "w_attr": 0.0}, shards=str(store), out=str(tmp_path / "run")))
    with pytest.raises(ExportError, match="no 'attribute' prompt"):
        export_backbone(ExportConfig(run=tmp_path / "run", out=tmp_path / "e", task="attribute"))


def front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_tells_data_training_and_scores(run_dir: Path, tmp_path: Path) -> None:
    results = {"backbone": str(tmp_path / "e"), "data": "/data/world", "kind": "synth", "tasks": ["attributes", "reid"],
               "task_prompt": "export", "attributes": {"mA": 0.71234, "mA_interval": {"value": 0.71234, "low": 0.69,
                                                                                       "high": 0.735}},
               "reid": {"mAP": 0.5, "rank1": None, "rank1_reason": "no query"}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    runner = CliRunner()
    done = runner.invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "e"), "--task", "part",
                                "--eval-results", str(tmp_path / "results.json")])
    assert done.exit_code == 0, done.output
    card = (tmp_path / "e" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "clasp" and meta["license"] == "apache-2.0" and "clasp" in meta["tags"]
    assert meta["pipeline_tag"] == "image-feature-extraction"
    store = json.loads((run_dir / "config.json").read_text())["config"]["shards"]
    for line in (f"| store | `{store}` |", "| rows | 9 in 1 shard |", "CLIP `tiny-test-clip`", "| steps | 2 of 2 |",
                 "| images per step | 4 |", "| width, depth, heads | 32, 2, 2 |", "last 1 block, 3 experts, top-2",
                 "DINO self-distillation + 1 · per-token part classification + 1 · attribute prediction + "
                 "0.01 · MoE load balance", "**`part`** (this export's)",
                 "| attributes mA | 71.23 % (95 % interval 69.00–73.50) |", "| re-ID mAP | 50.00 % |",
                 "| re-ID rank-1 | n/a |", "on `/data/world` (synth"):
        assert line in card, line
    assert "parsing" not in card.split("## Evaluation")[1].split("##")[0]  # only what was evaluated
    # a store moved away, or rewritten since, is named as such, not described from what is there now
    Path(store).rename(tmp_path / "moved")
    export_backbone(ExportConfig(run=run_dir, out=tmp_path / "e2"))
    card = (tmp_path / "e2" / "README.md").read_text()
    assert "its manifest was not reachable at export time" in card and "| rows |" not in card
    assert "No scores were given to this export" in card
    write_store(Path(store), Vocabulary.default(), [5], grid=(8, 4), hw=(64, 32))
    export_backbone(ExportConfig(run=run_dir, out=tmp_path / "e2"))
    assert "the store at that path has changed since training" in (tmp_path / "e2" / "README.md").read_text()
    for args, says in ((["--eval-results", str(tmp_path / "none.json")], "none.json: eval results not found"),
                       (["--eval-results", str(run_dir / "config.json")], "not a results file of `clasp eval`"),
                       (["--eval-results", str(tmp_path / "results.json"), "--format", "onnx"], "not into model.onnx")):
        refused = runner.invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "e3"), *args])
        assert refused.exit_code == 2 and says in refused.output and len(refused.output.strip().splitlines()) == 1
        assert not (tmp_path / "e3").exists()
