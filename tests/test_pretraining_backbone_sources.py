"""`load_backbone` from a hub id (offline: snapshot_download replaced) and at other input sizes (img_hw)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from clasp.pretraining import load_backbone
from clasp.pretraining.backbone import BackboneError
from clasp.pretraining.export import ExportConfig, export_backbone
from tests.test_pretraining_export_onnx import write_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = dict(dim=32, depth=2, heads=2, img_hw=(256, 128), moe_layers=1, experts=3, top_k=2)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An export folder laid out as a hub snapshot of an uploaded export is (config.json, model.safetensors)."""
    return export_backbone(ExportConfig(run=write_run(tmp_path / "run", ARCH), out=tmp_path / "snapshot",
                                        task="attribute"))


def images(batch: int, h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h + w))


def features(backbone: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return backbone(x)


def test_a_hub_id_loads_its_snapshot(export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append((a, k)) or str(export))
    monkeypatch.chdir(tmp_path)
    backbone = load_backbone("someone/clasp-vit-s", revision="v1.0")
    assert calls == [(("someone/clasp-vit-s",), {"revision": "v1.0", "allow_patterns": ["config.json",
                                                                                        "model.safetensors"]})]
    x = images(2, 256, 128)
    torch.testing.assert_close(features(backbone, x), features(load_backbone(export), x), rtol=0, atol=0)
    assert backbone.task == "attribute"
    # an existing folder wins over a hub id of the same spelling; a Path is always a folder
    (tmp_path / "someone").mkdir()
    export.rename(tmp_path / "someone" / "clasp-vit-s")
    load_backbone("someone/clasp-vit-s")
    with pytest.raises(BackboneError, match="config.json: not found"):
        load_backbone(Path("elsewhere/clasp-vit-s"))
    with pytest.raises(BackboneError, match="revision='v1.0' is for hub ids"):
        load_backbone("someone/clasp-vit-s", revision="v1.0")
    assert len(calls) == 1


def hub_error(name: str) -> Exception:
    from huggingface_hub import errors

    cls = getattr(errors, name)
    if issubclass(cls, errors.HfHubHTTPError):
        return cls("404 Client Error", response=types.SimpleNamespace(headers={}, request=None))
    return cls("Cannot find an appropriate cached snapshot folder")


@pytest.mark.parametrize("raised, says", [
    ("RepositoryNotFoundError", "no hub repository of that id"),
    ("RevisionNotFoundError", "has no revision 'main'"),
    ("LocalEntryNotFoundError", "not in the local hub cache, and the hub cannot be reached"),
    ("GatedRepoError", "a gated hub repository"),
])
def test_hub_errors_are_one_line(raised: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fail(*args, **kwargs):
        raise hub_error(raised)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(BackboneError) as caught:
        load_backbone("someone/missing", revision="main")
    assert says in str(caught.value) and "someone/missing" in str(caught.value) and "\n" not in str(caught.value)


def test_a_hub_repository_without_an_export_and_no_huggingface_hub(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path / "empty"))
    with pytest.raises(BackboneError, match="someone/other: the hub repository has no config.json"):
        load_backbone("someone/other")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(BackboneError, match=r"needs huggingface_hub \(pip install 'clasp\[hub\]'\)"):
        load_backbone("someone/other")


def test_native_size_is_unchanged_and_other_sizes_resize_the_positions(export: Path) -> None:
    native = load_backbone(export)
    x = images(2, 256, 128)
    torch.testing.assert_close(features(load_backbone(export, img_hw=(256, 128)), x), features(native, x),
                               rtol=0, atol=0)
    for h, w in ((256, 192), (384, 128), (128, 64)):  # pose crops, re-ID crops, the local crops of training
        resized = load_backbone(export, img_hw=(h, w))
        assert resized.backbone.pos_embed.shape == (1, 1 + (h // 16) * (w // 16), 32)
        torch.testing.assert_close(resized.backbone.pos_embed[:, 0], native.backbone.pos_embed[:, 0], rtol=0, atol=0)
        x = images(3, h, w)
        cls, patches = features(resized, x)
        assert cls.shape == (3, 32) and patches.shape == (3, (h // 16) * (w // 16), 32)
        # the same as the native backbone resizing on the fly: what the local crops were trained with
        torch.testing.assert_close((cls, patches), features(native, x), rtol=0, atol=1e-6)


def test_a_size_off_the_patch_grid_is_one_clear_error(export: Path) -> None:
    with pytest.raises(BackboneError, match=r"img_hw=\(250, 128\).*not a multiple of patch 16"):
        load_backbone(export, img_hw=(250, 128))
    with pytest.raises(BackboneError, match="img_hw must be"):
        load_backbone(export, img_hw=(256,))
    with pytest.raises(ValueError, match="images of 250x128 pixels: height and width must be multiples of the "
                                         "patch size 16"):
        features(load_backbone(export), images(1, 250, 128))
