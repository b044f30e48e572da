"""Image folders: class-per-folder labels, class-balanced sampling, lazy reading."""

from __future__ import annotations

from collections import Counter

import numpy as np
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
    nhwc = open_folder(root, (4, 6), Preprocess(layout="NHWC", color="BGR"))
    assert nhwc[0:1].shape == (1, 4, 6, 3) and nhwc[0:1][0, 0, 0].tolist() == [0, 0, 1]
    gray = open_folder(root, (4, 6), Preprocess(color="GRAY"))
    assert gray.shape == (3, 1, 4, 6)


def test_empty_folder_is_one_error(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        open_folder(tmp_path, (4, 6), Preprocess())


def test_shorter_side_resize_then_centre_crop(tmp_path):
    """torchvision's Resize(S) + CenterCrop: a 12x6 (WxH) image, side 6, crop 4x4."""
    root = tmp_path / "d"
    root.mkdir()
    img = np.zeros((6, 12, 3), np.uint8)
    img[:, 5:7] = 255  # a white band in the middle
    Image.fromarray(img).save(root / "a.png")
    pre = Preprocess(size=(6,), crop=(4, 4), scale=1.0, color="GRAY")
    x = open_folder(root, pre.output_size(None, root), pre)[0:1]
    assert x.shape == (1, 1, 4, 4) and x.max() == 255.0
    band = x[0, 0]  # columns 4..7 of the original: dark, white, white, dark
    assert band[:, [0, 3]].max() == 0.0 and band[:, 1:3].min() == 255.0


def test_output_size_rules(tmp_path):
    assert Preprocess(crop=(3, 5)).output_size([None, None], tmp_path) == (3, 5)
    assert Preprocess().output_size([7, 9], tmp_path) == (7, 9)
    with pytest.raises(DataError, match="--resize HxW or --crop HxW"):
        Preprocess().output_size([None, None], tmp_path)
    with pytest.raises(DataError, match="add --crop 7x9"):
        Preprocess(size=(8,)).output_size([7, 9], tmp_path)


def test_record_round_trip_checks_values():
    from compiler.core.errors import ConfigError

    pre = Preprocess(size=(256,), crop=(224, 224), mean=(0.5, 0.5, 0.5), color="BGR")
    assert Preprocess.from_record(pre.record()).record() == pre.record()
    with pytest.raises(ConfigError, match="color"):
        Preprocess.from_record({"color": "CMYK"})
