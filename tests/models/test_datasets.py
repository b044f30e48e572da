"""Bundled datasets: names, shapes, determinism and npz validation."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.errors import DataError
from models.datasets import DATA_DIR, DATASETS, load_dataset, load_npz


def test_unknown_name_lists_known_names():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*fmnist-eval.*text-lines"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name,n", [("fmnist-eval", 2000), ("fmnist-calib", 256)])
def test_committed_fmnist_subsets(name, n):
    if not (DATA_DIR / f"{name.replace('-', '_')}.npz").is_file():
        pytest.skip(f"{name} npz not committed yet")
    ds = load_dataset(name)
    assert ds.kind == "classification" and ds.name == name
    assert ds.inputs.shape == (n, 1, 28, 28) and ds.inputs.dtype == np.float32
    assert ds.labels.shape == (n,) and set(np.unique(ds.labels)) <= set(range(10))


def test_fmnist_test_full_split():
    from models.datasets.fmnist_idx import load_fmnist

    try:
        load_fmnist("test")
    except DataError as exc:
        pytest.skip(str(exc))
    ds = load_dataset("fmnist-test")
    assert ds.inputs.shape == (10000, 1, 28, 28) and len(ds.labels) == 10000
    # Same preprocessing as the committed subset: its first image is a test image.
    if (DATA_DIR / "fmnist_eval.npz").is_file():
        ev = np.load(DATA_DIR / "fmnist_eval.npz")
        np.testing.assert_allclose(ds.inputs[ev["indices"][:5]], ev["images"][:5], atol=1e-6)


def test_fmnist_train_split_limit_matches_the_committed_calibration_images():
    from models.datasets.fmnist_idx import load_fmnist

    try:
        load_fmnist("train")
    except DataError as exc:
        pytest.skip(str(exc))
    cal = np.load(DATA_DIR / "fmnist_calib.npz")
    last = int(cal["indices"][3]) + 1  # the limit reaches the 4th calibration image
    ds = load_dataset("fmnist-train", limit=last)
    assert ds.inputs.shape == (last, 1, 28, 28) and ds.name == "fmnist-train"
    np.testing.assert_allclose(ds.inputs[cal["indices"][:4]], cal["images"][:4], atol=1e-6)
    np.testing.assert_array_equal(ds.labels[cal["indices"][:4]], cal["labels"][:4])
    with pytest.raises(DataError, match="limit must be positive"):
        load_dataset("fmnist-train", limit=0)


@pytest.fixture(scope="module")
def photos():
    pytest.importorskip("skimage", reason="zoo extra not installed")
    pytest.importorskip("sklearn", reason="zoo extra not installed")
    return load_dataset("photos")


def test_photos_shape_and_range(photos):
    ds = photos
    assert ds.kind == "unlabelled" and ds.labels is None
    assert ds.inputs.shape == (320, 3, 224, 224) and ds.inputs.dtype == np.float32
    assert -1.0 <= ds.inputs.min() < ds.inputs.max() <= 1.0
    # views are distinct: no two samples identical
    flat = ds.inputs.reshape(320, -1)[:, ::997]
    assert len(np.unique(flat, axis=0)) == 320


def test_photo_set_is_deterministic_and_prefix_stable(photos):
    from models.datasets.photos import photo_set

    ds = photos
    np.testing.assert_array_equal(photo_set(4), ds.inputs[:4])
    assert not np.array_equal(photo_set(4, seed=1), ds.inputs[:4])
    with pytest.raises(DataError, match="n must be"):
        photo_set(100000)


def test_text_lines():
    pytest.importorskip("PIL", reason="zoo extra not installed")
    from models.datasets.text_lines import text_line_set

    ds = load_dataset("text-lines", limit=20)
    assert ds.kind == "ocr" and len(ds.labels) == 20
    assert ds.inputs.shape == (20, 3, 48, 320)
    assert all(isinstance(s, str) and s for s in ds.labels)
    assert ds.inputs.min() >= -1.0 and ds.inputs.max() <= 1.0
    images, labels = text_line_set(20)
    assert labels == ds.labels and np.array_equal(images, ds.inputs)


def test_npz_validation(tmp_path):
    images = np.zeros((4, 1, 8, 8), np.float32)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.arange(4))
    assert load_dataset(tmp_path / "ok.npz").kind == "classification"
    np.savez(tmp_path / "nolab.npz", images=images)
    assert load_dataset(str(tmp_path / "nolab.npz")).labels is None
    np.savez(tmp_path / "count.npz", images=images, labels=np.arange(3))
    with pytest.raises(DataError, match="count.npz: 3 labels for 4 images"):
        load_npz(tmp_path / "count.npz")
    np.savez(tmp_path / "noimg.npz", x=images)
    with pytest.raises(DataError, match="no 'images'"):
        load_npz(tmp_path / "noimg.npz")
    np.savez(tmp_path / "rank.npz", images=images[:, 0])
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        load_npz(tmp_path / "rank.npz")
    with pytest.raises(DataError, match="cannot read"):
        load_npz(tmp_path / "absent.npz")


def test_every_name_is_documented():
    import models.datasets as mod

    assert all(name in mod.__doc__ for name in DATASETS)
