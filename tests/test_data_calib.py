"""Calibration sets: bundled real data, user folders/npz/clips, corrupt files, hashes, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeforge.data import bundled
from edgeforge.data.calib import channel_stats, contact_sheet, load_definition, make, materialize
from edgeforge.data.preprocess import Preprocess
from edgeforge.errors import BadInput

PRE = Preprocess(3, 32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
PRE_VIDEO = Preprocess(3, 24, 24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), frames=4)


def test_digits_split_is_disjoint_and_fixed():
    tr, ytr = bundled.digits("train")
    ev, yev = bundled.digits("eval")
    assert len(tr) + len(ev) == 1797 and len(ev) == bundled.DIGITS_EVAL_COUNT
    assert tr.dtype == np.uint8 and tr.shape[1:] == (8, 8)
    all_imgs = {im.tobytes() for im in bundled.digits("all")[0]}
    assert {im.tobytes() for im in tr} <= all_imgs
    assert set(np.unique(yev)) == set(range(10))


def test_bundled_sets_materialise_deterministically():
    a = materialize("digits", PRE, 8)
    b = materialize("digits", PRE, 8)
    assert a.x.shape == (8, 3, 32, 32) and a.x.dtype == np.float32
    assert a.hash == b.hash and np.array_equal(a.x, b.x)
    assert a.labels is not None and len(a.labels) == 8
    # upsampled digits are real images: ink in the middle, gray channels equal
    assert np.allclose(a.x[:, 0], a.x[:, 1])
    n = materialize("natural", PRE, 6)
    assert n.x.shape == (6, 3, 32, 32) and n.labels is None
    assert n.hash != a.hash
    # a different seed is a different set (and a different hash)
    d = load_definition("natural").model_copy(update={"seed": 5})
    assert materialize(d, PRE, 6).hash != n.hash


def test_clips_are_camera_pans():
    c = materialize("clips", PRE_VIDEO, 3)
    assert c.x.shape == (3, 4, 3, 24, 24)
    # consecutive frames of a pan are similar but not identical
    f0, f1 = c.x[0, 0], c.x[0, 1]
    assert not np.array_equal(f0, f1)
    assert np.corrcoef(f0.ravel(), f1.ravel())[0, 1] > 0.3


def _write_images(folder, n, size=(20, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_folder_make_show_and_corrupt_files(tmp_path):
    root = tmp_path / "imgs"
    _write_images(root / "cat", 3)
    _write_images(root / "dog", 3)
    (root / "dog" / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "calib" / "pets.yaml"
    defn, scan = make(root, out, count=10)
    assert scan["total"] == 7 and scan["readable"] == 6
    assert [p for p, _ in scan["unreadable"]] == [str(root / "dog" / "broken.png")]
    assert out.is_file()
    data = materialize(str(out), PRE)
    assert len(data) == 6 and data.labels is not None and sorted(set(data.labels.tolist())) == [0, 1]
    assert [p for p, _ in data.skipped] == [str(root / "dog" / "broken.png")]
    with pytest.raises(BadInput, match="broken.png"):
        materialize(str(out), PRE, on_corrupt="refuse")
    with pytest.raises(BadInput, match="broken.png"):
        make(root, tmp_path / "x.yaml", on_corrupt="refuse")
    stats = channel_stats(data.x)
    np.testing.assert_allclose(stats["mean"], data.x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["std"], data.x.std(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert stats["min"] == data.x.min(axis=(0, 2, 3)).tolist() and stats["max"] == data.x.max(axis=(0, 2, 3)).tolist()
    png = contact_sheet(data, tmp_path / "sheet.png")
    _check_sheet(png, data, cols=3, rows=2)


def _check_sheet(png, data, cols, rows, tile=96):
    """The contact sheet is a cols x rows grid of `tile`-pixel tiles, each showing its sample."""
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (rows * tile, cols * tile, 3)
    for i, x in enumerate(data.x):
        r, c = divmod(i, cols)
        want = np.asarray(Image.fromarray(data.preprocess.denormalize(x)).resize((tile - 2, tile - 2), Image.NEAREST))
        got = img[r * tile + 1:(r + 1) * tile - 1, c * tile + 1:(c + 1) * tile - 1]
        assert np.array_equal(got, want), f"tile {i} does not show sample {i}"


def test_npz_and_video_sources(tmp_path):
    rng = np.random.default_rng(1)
    # image i is flat gray 50*i, so each materialised sample tells which npz row it came from
    flat = np.repeat(np.arange(5, dtype=np.uint8)[:, None, None, None] * 50, 12 * 12 * 3).reshape(5, 12, 12, 3)
    np.savez(tmp_path / "d.npz", x=flat, y=np.arange(5) + 10)
    defn, scan = make(tmp_path / "d.npz", tmp_path / "d.yaml")
    assert scan["kind"] == "npz"
    data = materialize(str(tmp_path / "d.yaml"), PRE)
    assert data.x.shape == (5, 3, 32, 32)
    rows = np.rint((data.x.mean(axis=(1, 2, 3)) * 0.25 + 0.5) * 255 / 50).astype(int)
    assert sorted(rows.tolist()) == [0, 1, 2, 3, 4]
    assert data.labels.tolist() == (rows + 10).tolist()  # every sample keeps its own label
    # already-preprocessed float samples in the model's layout are used as they are
    pre_x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "p.npz", x=pre_x)
    make(tmp_path / "p.npz", tmp_path / "p.yaml", seed=0)
    p = materialize(str(tmp_path / "p.yaml"), PRE)
    assert {a.tobytes() for a in p.x} == {a.tobytes() for a in pre_x}
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="bad.npz"):
        make(tmp_path / "bad.npz", tmp_path / "b.yaml")
    # clips: one folder of frames per clip
    for c in range(2):
        _write_images(tmp_path / "clips" / f"clip{c}", 6, size=(30, 30))
    make(tmp_path / "clips", tmp_path / "v.yaml", kind="video")
    v = materialize(str(tmp_path / "v.yaml"), PRE_VIDEO)
    assert v.x.shape == (2, 4, 3, 24, 24)


def test_unknown_set_names_what_exists():
    with pytest.raises(BadInput, match="bundled: digits, natural, clips"):
        load_definition("no_such_set")


def test_calib_cli(run_cli, tmp_path):
    _write_images(tmp_path / "flat", 4)
    out = tmp_path / "c.yaml"
    code, stdout, _ = run_cli("calib", "make", tmp_path / "flat", "--out", out, "--count", "3")
    assert code == 0 and "4 of 4 readable" in stdout
    sheet = tmp_path / "s.png"
    code, stdout, _ = run_cli("calib", "show", str(out), "--sheet", sheet)
    assert code == 0 and "per-channel" in stdout
    from edgeforge.recipes import InputSpec

    # `calib show` without --recipe uses 3x224x224 with ImageNet statistics; 3 samples: a 2x2 grid
    _check_sheet(sheet, materialize(str(out), Preprocess.from_input_spec(InputSpec(shape=[3, 224, 224]))),
                 cols=2, rows=2)
    code, _, err = run_cli("calib", "show", "nope_set")
    assert code == 2 and "nope_set" in err
    # a folder with no images: exit 2 naming it, and no YAML written
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("calib", "make", tmp_path / "empty", "--out", tmp_path / "e.yaml")
    assert code == 2 and "empty" in err and "no samples found" in err
    assert not (tmp_path / "e.yaml").exists()
    code, _, err = run_cli("calib", "make", tmp_path / "nowhere", "--out", tmp_path / "n.yaml")
    assert code == 2 and "nowhere" in err and not (tmp_path / "n.yaml").exists()
