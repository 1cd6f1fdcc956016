"""CLIP side of stage one: loading, dense features, text embeddings, pseudo-labels, the labeler."""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clasp.labeling.clip_loading import ClipLoadError, load_clip
from clasp.labeling.dense_features import DENSE_MODES, NACLIP_STD, dense_features, naclip_prior
from clasp.labeling.errors import LabelingError
from clasp.labeling.labeler import ClipLabeler, ClipLabelerConfig
from clasp.labeling.pseudo_labels import attribute_logits, part_labels, part_logits
from clasp.labeling.text_embeddings import TextEmbeddings, projected_features
from clasp.store import Vocabulary


@pytest.fixture(scope="module")
def labeler(tiny_clip_dir: Path, vocab: Vocabulary) -> ClipLabeler:
    """In fp32 on every CPU kind: the reference math below runs on its (then fp32) weights."""
    return ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), precision="fp32"), vocab)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Person-crop-like images of assorted sizes, each with a different structure."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(256, 128), (300, 140), (97, 41), (128, 64)]):
        base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        base[: h // 3] = (40 * i, 200, 90)  # a flat band so cells are not all alike
        out.append(Image.fromarray(base))
    return out


@pytest.fixture(scope="module")
def pixels(labeler: ClipLabeler, images: list[Image.Image]) -> torch.Tensor:
    return labeler.preprocess(images)


# --------------------------------------------------------------------------- loading


def test_load_error_names_the_model_and_how_to_proceed(tmp_path: Path) -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # no test may try the network
    missing = tmp_path / "no-such-clip"
    for name in (str(missing), "openai/clip-vit-base-patch16"):
        with pytest.raises(ClipLoadError) as info:
            load_clip(name)
        message = str(info.value)
        assert "\n" not in message
        assert repr(name) in message
        assert "clasp tiny-clip DIR" in message and "--clip-model DIR" in message
        assert isinstance(info.value, LabelingError)  # the CLI turns it into exit code 2
    with pytest.raises(ClipLoadError, match="no such folder"):
        load_clip(str(missing))


def test_load_error_for_a_folder_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ClipLoadError, match=str(tmp_path)):
        load_clip(str(tmp_path))


def test_clip_info_and_grid(labeler: ClipLabeler, tiny_clip_dir: Path) -> None:
    info = labeler.clip_info
    assert (info.model, info.revision, info.input_hw, info.dense_mode) == (str(tiny_clip_dir), None, (448, 224),
                                                                            "maskclip")
    assert labeler.label_grid == (28, 14)


def test_hub_id_loads_from_the_hub_cache_offline_and_records_its_commit(
        tiny_clip_dir: Path, vocab: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id takes the same path as a folder; the commit it resolved to is what the manifest records."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    labeler = ClipLabeler(ClipLabelerConfig(clip_model="acme/tiny-clip", dense_mode="naive"), vocab)
    assert labeler.clip_info.model == "acme/tiny-clip" and labeler.clip_info.revision == commit
    with pytest.raises(ClipLoadError, match="acme/other"):
        load_clip("acme/other")


# --------------------------------------------------------------------------- dense features


def test_image_embedding_equals_get_image_features(labeler: ClipLabeler, pixels: torch.Tensor) -> None:
    model = labeler.model
    with torch.inference_mode():
        reference = projected_features(model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True))
        for mode in DENSE_MODES:
            features = dense_features(model, pixels, mode)
            assert features.image.shape == reference.shape
            assert (features.image - reference).abs().max().item() <= 1e-5, mode


def test_naive_patches_are_last_layer_tokens_projected(labeler: ClipLabeler, pixels: torch.Tensor) -> None:
    model = labeler.model
    with torch.inference_mode():
        last = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        reference = model.visual_projection(model.vision_model.post_layernorm(last[:, 1:]))
        patches = dense_features(model, pixels, "naive").patches
    assert patches.shape == (len(pixels), 28, 14, model.config.projection_dim)
    torch.testing.assert_close(patches.reshape(len(pixels), 28 * 14, -1), reference, atol=1e-5, rtol=0)


def test_maskclip_patches_match_a_reference_built_from_the_layer_modules(labeler: ClipLabeler,
                                                                          pixels: torch.Tensor) -> None:
    model = labeler.model
    vision = model.vision_model
    block = vision.encoder.layers[-1]
    with torch.inference_mode():
        out = vision(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
        x = out.hidden_states[-2][:, 1:]  # patch tokens entering the last block
        v = x + block.self_attn.out_proj(block.self_attn.v_proj(block.layer_norm1(x)))
        v = v + block.mlp(block.layer_norm2(v))
        reference = model.visual_projection(vision.post_layernorm(v)).reshape(len(pixels), 28, 14, -1)
        maskclip = dense_features(model, pixels, "maskclip").patches
        naive = dense_features(model, pixels, "naive").patches
    torch.testing.assert_close(maskclip, reference, atol=1e-5, rtol=0)
    # The value path is not the attention path: the two modes must really differ.
    assert (maskclip - naive).abs().max().item() > 1e-2


def _alike_attention_reference(model, pixels: torch.Tensor, mode: str, std: float = NACLIP_STD) -> torch.Tensor:
    """ClearCLIP / SCLIP / NACLIP patch grids written out head by head from the last block's modules."""
    vision = model.vision_model
    block, n = vision.encoder.layers[-1], len(pixels)
    attn = block.self_attn
    x = vision(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2]
    normed = block.layer_norm1(x)
    q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)
    cells = [(r, c) for r in range(28) for c in range(14)]  # row-major, as the patch tokens
    omega = torch.zeros(x.shape[1], x.shape[1])  # nothing added towards or from CLS (token 0)
    omega[1:, 1:] = torch.tensor([[math.exp(-((r - r2) ** 2 + (c - c2) ** 2) / (2 * std**2)) for r2, c2 in cells]
                                  for r, c in cells])
    d, scale = attn.head_dim, attn.head_dim**-0.5
    heads = []
    for h in range(attn.num_heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        qq = torch.einsum("nid,njd->nij", qh, qh) * scale
        kk = torch.einsum("nid,njd->nij", kh, kh) * scale
        weights = {"clearclip": lambda: qq.softmax(-1),
                   "sclip": lambda: qq.softmax(-1) + kk.softmax(-1),
                   "naclip": lambda: (kk + omega).softmax(-1)}[mode]()
        heads.append(torch.einsum("nij,njd->nid", weights, vh))
    y = attn.out_proj(torch.cat(heads, dim=-1))[:, 1:]
    if mode == "sclip":  # SCLIP keeps the residual and the MLP; ClearCLIP and NACLIP drop both
        y = x[:, 1:] + y
        y = y + block.mlp(block.layer_norm2(y))
    return model.visual_projection(vision.post_layernorm(y)).reshape(n, 28, 14, -1)


@pytest.mark.parametrize("mode", ["clearclip", "sclip", "naclip"])
def test_alike_attention_modes_match_a_head_by_head_reference(labeler: ClipLabeler, pixels: torch.Tensor,
                                                               mode: str) -> None:
    model = labeler.model
    with torch.inference_mode():
        patches = dense_features(model, pixels, mode).patches
        reference = _alike_attention_reference(model, pixels, mode)
        others = {other: dense_features(model, pixels, other).patches for other in DENSE_MODES if other != mode}
    assert patches.shape == (len(pixels), 28, 14, model.config.projection_dim)
    torch.testing.assert_close(patches, reference, atol=1e-5, rtol=0)
    for other, features in others.items():  # each mode is its own formula
        assert (patches - features).abs().max().item() > 1e-2, other


def test_naclip_prior_is_a_gaussian_of_grid_distance(labeler: ClipLabeler, pixels: torch.Tensor) -> None:
    # 2 x 3 grid, std 1: patch (0, 0) towards CLS, then (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    expected = [0.0, 1.0, math.exp(-0.5), math.exp(-2), math.exp(-0.5), math.exp(-1), math.exp(-2.5)]
    torch.testing.assert_close(naclip_prior(2, 3, std=1.0)[0], torch.tensor(expected))
    model = labeler.model
    with torch.inference_mode():
        local = dense_features(model, pixels, "naclip", naclip_std=0.7).patches
        reference = _alike_attention_reference(model, pixels, "naclip", std=0.7)
        default = dense_features(model, pixels, "naclip").patches
        flat = dense_features(model, pixels, "naclip", naclip_std=1e6).patches
    torch.testing.assert_close(local, reference, atol=1e-5, rtol=0)
    # The prior matters: a narrower Gaussian, the default and an almost flat one give different tokens.
    assert (local - default).abs().max().item() > 1e-2
    assert (default - flat).abs().max().item() > 1e-2


def test_an_unknown_dense_mode_is_refused(labeler: ClipLabeler, pixels: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown dense mode 'attention'; choose one of maskclip, naive, clearclip"):
        dense_features(labeler.model, pixels[:1], "attention")


def test_the_cli_and_the_run_offer_every_dense_mode() -> None:
    from clasp.cli import label
    from clasp.labeling.run import LabelConfig, check_config

    option = next(param for param in label.params if param.name == "dense_mode")
    assert tuple(option.type.choices) == DENSE_MODES
    for mode in DENSE_MODES:
        check_config(LabelConfig(images=Path("in"), out=Path("out"), dense_mode=mode))


def test_grid_follows_clip_size(tiny_clip_dir: Path, vocab: Vocabulary, images: list[Image.Image]) -> None:
    square = ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(224, 224), dense_mode="naive"),
                         vocab)
    assert square.label_grid == (14, 14)
    mask, conf, attrs = square.label(square.preprocess(images[:2]))
    assert mask.shape == conf.shape == (2, 14, 14) and attrs.shape == (2, vocab.num_attributes)
    with pytest.raises(LabelingError, match="patch size 16"):
        ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(450, 224)), vocab)


# --------------------------------------------------------------------------- text embeddings


def test_text_embeddings_ensemble_prompts_and_keep_background_prompts(labeler: ClipLabeler,
                                                                      vocab: Vocabulary) -> None:
    model, tokenizer = labeler.model, labeler.tokenizer

    def one(prompt: str) -> torch.Tensor:  # unpadded, one at a time: checks padding changes nothing
        ids = tokenizer([prompt], return_tensors="pt")
        with torch.inference_mode():
            return F.normalize(projected_features(model.get_text_features(**ids))[0], dim=-1)

    text = labeler.text
    background = vocab.parts[0].prompts
    assert text.background.shape == (len(background), model.config.projection_dim)
    torch.testing.assert_close(text.background[1], one(background[1]), atol=1e-5, rtol=0)
    assert text.parts.shape[0] == vocab.num_parts - 1
    head = vocab.parts[1]
    expected = F.normalize(torch.stack([one(p) for p in head.prompts]).mean(0), dim=-1)
    torch.testing.assert_close(text.parts[0], expected, atol=1e-5, rtol=0)
    # Attribute rows follow `attribute_columns`: check the last column.
    last_value = vocab.attributes[-1].values[-1]
    assert vocab.attribute_columns[-1] == (vocab.attributes[-1].group, last_value.name)
    expected = F.normalize(torch.stack([one(p) for p in last_value.prompts]).mean(0), dim=-1)
    torch.testing.assert_close(text.attributes[-1], expected, atol=1e-5, rtol=0)
    assert text.attributes.shape[0] == vocab.num_attributes
    norms = torch.cat([text.background, text.parts, text.attributes]).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


# --------------------------------------------------------------------------- pseudo-labels


def test_part_assignment_on_a_constructed_case() -> None:
    """Text embeddings equal to chosen cells' features: those cells must get those classes."""
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(1, 4, 3, 16, generator=generator)
    unit = F.normalize(patches, dim=-1)
    text = TextEmbeddings(
        background=torch.stack([unit[0, 0, 0], unit[0, 3, 2]]),  # two scene prompts
        parts=torch.stack([unit[0, 1, 1], unit[0, 2, 0]]),  # part 1, part 2
        attributes=torch.stack([unit[0, 1, 1], -unit[0, 1, 1]]),
    )
    scale = torch.tensor(np.log(100.0))
    logits = part_logits(patches, text, scale)
    assert logits.shape == (1, 4, 3, 3)
    mask, conf = part_labels(logits)
    assert mask.dtype == torch.uint8
    assert mask[0, 0, 0] == 0 and mask[0, 3, 2] == 0  # either background prompt gives background
    assert mask[0, 1, 1] == 1 and mask[0, 2, 0] == 2
    # A matched cell's logit is the full scale; background takes the best of its prompts.
    assert logits[0, 1, 1, 1].item() == pytest.approx(100.0, rel=1e-5)
    assert logits[0, 3, 2, 0].item() == pytest.approx(100.0, rel=1e-5)
    cos = unit[0, 2, 1] @ torch.stack([*text.background, *text.parts]).T
    expected = torch.cat([cos[:2].max().view(1), cos[2:]]) * 100.0
    torch.testing.assert_close(logits[0, 2, 1], expected, atol=1e-4, rtol=0)
    assert mask[0, 2, 1] == expected.argmax()
    assert conf[0, 2, 1].item() == pytest.approx(expected.softmax(0).max().item(), rel=1e-5)
    attrs = attribute_logits(patches[:, 1, 1], text, scale)
    torch.testing.assert_close(attrs, torch.tensor([[100.0, -100.0]]), atol=1e-4, rtol=0)


def test_labeler_assigns_chosen_cells_to_the_parts_built_from_them(labeler: ClipLabeler,
                                                                    pixels: torch.Tensor) -> None:
    with torch.inference_mode():
        unit = F.normalize(dense_features(labeler.model, pixels, "maskclip").patches, dim=-1)
    chosen = {1: (0, 3, 5), 2: (1, 20, 7), 3: (2, 10, 1), 4: (3, 27, 13), 5: (0, 14, 12)}
    parts = torch.stack([unit[chosen[k]] for k in sorted(chosen)])
    background = torch.stack([unit[0, 0, 0], unit[2, 27, 0]])
    constructed = replace(labeler.text, parts=parts, background=background)
    original = labeler.text
    labeler.text = constructed
    try:
        mask, conf, _ = labeler.label(pixels)
    finally:
        labeler.text = original
    for part, cell in chosen.items():
        assert mask[cell] == part, (part, cell)
    assert mask[0, 0, 0] == 0 and mask[2, 27, 0] == 0


# --------------------------------------------------------------------------- the labeler


def test_label_shapes_dtypes_and_ranges(labeler: ClipLabeler, pixels: torch.Tensor, vocab: Vocabulary) -> None:
    mask, conf, attrs = labeler.label(pixels)
    n = len(pixels)
    assert mask.shape == (n, 28, 14) and mask.dtype == np.uint8
    assert conf.shape == (n, 28, 14) and conf.dtype == np.float16
    assert attrs.shape == (n, vocab.num_attributes) and attrs.dtype == np.float16
    assert mask.max() < vocab.num_parts
    assert conf.min() >= np.float16(1.0 / vocab.num_parts) and conf.max() <= 1.0
    assert np.isfinite(attrs).all()
    scale = labeler.model.logit_scale.exp().item()
    assert np.abs(attrs).max() <= scale * 1.001  # scaled cosines
    empty = labeler.label(labeler.preprocess([]))
    assert [a.shape for a in empty] == [(0, 28, 14), (0, 28, 14), (0, vocab.num_attributes)]
    assert [a.dtype for a in empty] == [np.uint8, np.float16, np.float16]
    with torch.inference_mode():
        image = projected_features(labeler.model.get_image_features(pixel_values=pixels,
                                                                    interpolate_pos_encoding=True))
    expected = scale * F.normalize(image, dim=-1) @ labeler.text.attributes.T
    np.testing.assert_allclose(attrs.astype(np.float32), expected.numpy(), atol=0.02)


def test_preprocess_resizes_normalises_and_is_thread_safe(labeler: ClipLabeler,
                                                          images: list[Image.Image]) -> None:
    flat = Image.new("L", (30, 70), 128)  # grey, not RGB
    pixels = labeler.preprocess([flat, images[0]])
    assert pixels.shape == (2, 3, 448, 224) and pixels.dtype == torch.float32
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(pixels[0, :, 100, 50], (128 / 255 - mean) / std)
    sequential = [labeler.preprocess([im]) for im in images] * 4
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: labeler.preprocess([im]), images * 4))
    for a, b in zip(sequential, parallel):
        assert torch.equal(a, b)


def test_bf16_agrees_with_fp32(tiny_clip_dir: Path, vocab: Vocabulary, labeler: ClipLabeler,
                               pixels: torch.Tensor) -> None:
    bf16 = ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), precision="bf16"), vocab)
    mask32, conf32, attrs32 = labeler.label(pixels)
    mask16, conf16, attrs16 = bf16.label(pixels)
    # on CPU: the vision tower's weights cast once (no autocast), the text side still fp32
    assert bf16.weights_dtype == bf16.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert bf16.text.attributes.dtype == bf16.model.text_projection.weight.dtype == torch.float32
    assert (mask32 == mask16).mean() >= 0.9
    assert np.abs(attrs32.astype(np.float32) - attrs16.astype(np.float32)).max() <= 0.05 * np.abs(attrs32).max()


def test_labels_do_not_depend_on_the_batch(labeler: ClipLabeler, pixels: torch.Tensor) -> None:
    """Why a rerun may change --batch-size and keep its shards."""
    together = labeler.label(pixels)
    alone = [labeler.label(pixels[i:i + 1]) for i in range(len(pixels))]
    assert np.array_equal(together[0], np.concatenate([a[0] for a in alone]))
    for k in (1, 2):
        np.testing.assert_allclose(together[k].astype(np.float32),
                                   np.concatenate([a[k] for a in alone]).astype(np.float32), atol=2e-3)


def test_settings_the_labeler_cannot_honour_are_refused(tiny_clip_dir: Path, vocab: Vocabulary) -> None:
    cases = [({"precision": "fp16"}, "needs a CUDA device"),
             ({"dense_mode": "attention"}, "unknown dense mode"),
             ({"precision": "int8"}, "unknown precision"),
             ({"device": "gpu0"}, "unknown device")]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "no CUDA device"))
    for change, message in cases:
        with pytest.raises(LabelingError, match=message):
            ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), **change), vocab)
