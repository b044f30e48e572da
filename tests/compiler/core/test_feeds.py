import zipfile

import numpy as np
import pytest
from PIL import Image

from compiler.core.errors import DataError
from compiler.core.feeds import load_feeds
from compiler.core.imagefolder import spread
from compiler.core.io import load_model
from compiler.core.npfiles import read_npy, read_npz
from tests.conftest import conv_model

RNG = np.random.default_rng(0)


def _npy_header(shape, dtype="<f4") -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _vm_rss_kb() -> int:
    from pathlib import Path
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("VmRSS:"))
    return int(line.split()[1])


def test_large_npy_is_mapped_and_streamed_rows_leave_memory(tmp_path, monkeypatch):
    from compiler.core import npfiles
    from compiler.core.npfiles import release_rows

    monkeypatch.setattr(npfiles, "MAP_MIN_BYTES", 1 << 20)
    data = RNG.standard_normal((64, 256, 256)).astype(np.float32)  # 16 MiB
    np.save(tmp_path / "big.npy", data)
    mapped = read_npy(tmp_path / "big.npy", limit=48)
    assert isinstance(mapped, np.memmap) and mapped.shape == (48, 256, 256)
    before = _vm_rss_kb()
    total = 0.0
    for start in range(0, 48, 8):  # as calibration streams: touch a batch, release it
        total += float(mapped[start:start + 8].sum())
        release_rows(mapped, start + 8)
    assert _vm_rss_kb() - before < 4 << 10  # at most ~2 batches (2 MiB each) stayed resident
    assert total == pytest.approx(float(data[:48].sum(dtype=np.float64)), rel=1e-4)
    np.testing.assert_array_equal(mapped, data[:48])  # released pages read back unchanged
    mapped[0] = 0  # copy-on-write: the file keeps its values
    np.testing.assert_array_equal(read_npy(tmp_path / "big.npy")[0], data[0])
    release_rows(data, 8)  # not mapped: nothing happens
    assert float(data[0, 0, 0]) != 0.0
    small = read_npy(tmp_path / "big.npy", limit=2)  # below the threshold: read into memory
    assert not isinstance(small, np.memmap)
    release_rows(small[1:], 1)  # a view over a bytearray
    np.testing.assert_array_equal(small, data[:2])


def test_npy_reads_only_the_samples_asked_for(tmp_path):
    data = RNG.standard_normal((50, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    np.testing.assert_array_equal(read_npy(tmp_path / "d.npy"), data)
    head = read_npy(tmp_path / "d.npy", limit=7)
    np.testing.assert_array_equal(head, data[:7])
    assert head.flags.writeable and head.base.nbytes == 7 * 3 * 4 * 4 * 4


def test_npy_header_claiming_terabytes_is_refused_unread(tmp_path):
    path = tmp_path / "claims.npy"
    path.write_bytes(_npy_header((800_000, 3, 512, 512)) + b"\0" * 64)  # 2.5 TB claimed
    with pytest.raises(DataError, match="header claims 2,516,582,400,000 bytes of data, "
                                        "the file holds 64"):
        read_npy(path)


def test_fortran_and_object_arrays(tmp_path):
    data = np.asfortranarray(RNG.standard_normal((6, 5)).astype(np.float32))
    np.save(tmp_path / "f.npy", data)
    np.testing.assert_array_equal(read_npy(tmp_path / "f.npy", limit=2), data[:2])
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        read_npy(tmp_path / "o.npy")


def test_npz_limit_and_zip_bomb(tmp_path, monkeypatch):
    x = RNG.standard_normal((20, 3, 4, 4)).astype(np.float32)
    np.savez_compressed(tmp_path / "ok.npz", images=x, labels=np.arange(20))
    got = read_npz(tmp_path / "ok.npz", limit=5)
    assert got["images"].shape == (5, 3, 4, 4) and list(got["labels"]) == [0, 1, 2, 3, 4]
    # 256 MiB of zeros compress to ~250 kB; with a cap of 1 MiB nothing is inflated.
    monkeypatch.setenv("NPUC_LIMIT_ARRAY_BYTES", str(1 << 20))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header((1024, 64, 1024)))
            zeros = bytes(1 << 20)
            for _ in range(256):
                fh.write(zeros)
    with pytest.raises(DataError, match="bytes to read; the limit is 1,048,576"):
        read_npz(bomb)
    assert read_npz(bomb, limit=2)["images"].shape == (2, 64, 1024)


def test_spread_takes_every_class_folder(tmp_path):
    files = [tmp_path / f"class{c}" / f"{i}.png" for c in range(4) for i in range(25)]
    picked = spread(files, 8)
    assert len(picked) == 8 and {p.parent.name for p in picked} == {f"class{c}" for c in range(4)}
    assert spread(files, None) == files and spread(files, 500) == files


def test_decompression_bomb_image_is_one_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUC_LIMIT_IMAGE_PIXELS", str(100 * 100))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (200, 200)).save(folder / "big.png")
    model = load_model(conv_model())
    with pytest.raises(DataError, match=r"big.png: 200x200 pixels; the limit is 10,000"):
        load_feeds(folder, model)


def test_model_without_inputs_is_one_data_error(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    c = numpy_helper.from_array(np.ones((1, 3, 4, 4), np.float32), "c")
    graph = helper.make_graph([helper.make_node("Relu", ["c"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", 1, [1, 3, 4, 4])], [c])
    path = tmp_path / "noin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    np.save(tmp_path / "d.npy", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="noin.onnx: has no inputs"):
        load_feeds(tmp_path / "d.npy", load_model(path))
