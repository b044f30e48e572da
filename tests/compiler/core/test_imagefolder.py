"""Image folders: class-per-folder labels, class-balanced sampling, lazy reading."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from compiler.core.errors import DataError
from compiler.core.imagefolder import Preprocess, balanced, class_layout, open_folder

COLOURS = {"0_red": (255, 0, 0), "1_green": (0, 255, 0), "2_blue": (0, 0, 255)}


def make_folder(root, per_class=(5, 5, 5), names=tuple(COLOURS)):
    for n, name in zip(per_class, names, strict=True):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (6, 4), COLOURS.get(name, (9, 9, 9))).save(root / name / f"{i}.png")
    return root


def test_class_folders_give_labels_in_sorted_order(tmp_path):
    folder = open_folder(make_folder(tmp_path / "d"), (4, 6), Preprocess())
    assert folder.classes == ["0_red", "1_green", "2_blue"]
    assert folder.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    x = folder[4:6]  # only two files read
    assert x.shape == (2, 3, 4, 6) and folder.shape == (15, 3, 4, 6)
    assert x[0, 0].max() == 1.0 and x[1, 1].max() == 1.0  # red, then green


def test_integer_class_names_are_their_own_labels(tmp_path):
    folder = open_folder(make_folder(tmp_path / "d", (1, 1, 1), ("2", "10", "7")), (4, 6),
                         Preprocess())
    assert folder.classes == ["2", "7", "10"] and sorted(folder.labels.tolist()) == [2, 7, 10]


def test_limit_takes_every_class_equally(tmp_path):
    folder = open_folder(make_folder(tmp_path / "d", (20, 3, 40)), (4, 6), Preprocess(),
                         limit=9)
    assert Counter(folder.labels.tolist()) == {0: 3, 1: 3, 2: 3}
    again = open_folder(tmp_path / "d", (4, 6), Preprocess(), limit=9)
    assert again.files == folder.files  # seeded: the same sample every run
    small = balanced([["a"], ["b1", "b2", "b3"]], 3)  # a small class runs out, others go on
    assert small[0] == "a" and len(set(small)) == 3 and set(small[1:]) < {"b1", "b2", "b3"}


def test_flat_or_deep_folders_have_no_labels(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (6, 4)).save(flat / f"{i}.png")
    assert open_folder(flat, (4, 6), Preprocess()).labels is None
    deep = make_folder(tmp_path / "deep" / "x")
    assert class_layout(tmp_path / "deep", sorted(deep.rglob("*.png"))) is None


def test_nhwc_bgr_grayscale_layouts(tmp_path):
    root = make_folder(tmp_path / "d", (1, 1, 1))
    nhwc = open_folder(root, (4, 6), Preprocess(layout="NHWC", channel_order="BGR"))
    assert nhwc[0:1].shape == (1, 4, 6, 3) and nhwc[0:1][0, 0, 0].tolist() == [0, 0, 1]
    gray = open_folder(root, (4, 6), Preprocess(grayscale=True))
    assert gray.shape == (3, 1, 4, 6)


def test_empty_folder_is_one_error(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        open_folder(tmp_path, (4, 6), Preprocess())
