"""Loading and saving models: the boundary between ONNX files/protobufs and the IR."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from compiler.core.errors import ModelLoadError
from compiler.core.ir import Model
from compiler.core.opset import convert_opset

log = logging.getLogger(__name__)

INTERNAL_OPSET = 17
MIN_OPSET, MAX_OPSET = 7, 21
ModelSource = str | os.PathLike | onnx.ModelProto | Model


def load_model(src: ModelSource, *, fix_batch: bool = False, infer: bool = True) -> Model:
    """Load a model into the IR: parse, check, upgrade to the internal opset, infer shapes.

    Args:
        src: Path to an `.onnx` file, a `ModelProto`, or an IR `Model` (returned as a copy).
        fix_batch: Replace a symbolic or unknown leading (batch) dimension of every input by 1.
        infer: Run ONNX shape inference so every tensor carries its shape.

    Returns:
        The IR model; the source is never modified.

    Raises:
        ModelLoadError: Missing/unreadable/non-ONNX/truncated file, unsafe external data,
            unsupported opset, or a graph that fails the ONNX checker.
    """
    if isinstance(src, Model):
        return src.copy()
    if isinstance(src, onnx.ModelProto):
        proto, label, path = _copy_proto(src), "<ModelProto>", None
    else:
        path = Path(src)
        proto, label = read_proto(path), str(path)
    proto = normalize_proto(proto, label, fix_batch=fix_batch, infer=infer)
    return from_proto(proto, source=str(path.resolve()) if path else None)


def read_proto(path: Path) -> onnx.ModelProto:
    """Read an ONNX file, resolving external data only inside the model's folder."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from e
    proto = parse_proto(data, str(path))
    _load_external_data(proto, path)
    return proto


def parse_proto(data: bytes, label: str) -> onnx.ModelProto:
    """Parse serialized ONNX bytes, turning protobuf failures into one-line errors."""
    if not data:
        raise ModelLoadError(f"{label}: empty file, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{label}: not an ONNX model or truncated ({e})") from e
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{label}: not an ONNX model (no graph or opset)")
    return proto


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    folder = path.resolve().parent
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        target = (folder / info.get("location", "")).resolve()
        if os.path.commonpath([folder, target]) != str(folder):
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} has external data outside the model's folder "
                f"({info.get('location')!r}); refusing to read it")
        if not target.is_file():
            raise ModelLoadError(f"{path}: external data file {info.get('location')!r} missing")
    try:
        external_data_helper.load_external_data_for_model(proto, str(folder))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read external data ({e})") from e


def default_opset(proto: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) domain."""
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 1


def normalize_proto(proto: onnx.ModelProto, label: str, *, fix_batch: bool = False,
                    infer: bool = True) -> onnx.ModelProto:
    """Check, upgrade to the internal opset, drop initializer inputs, fix batch, infer."""
    opset = default_opset(proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelLoadError(
            f"{label}: unsupported opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET})")
    if not proto.graph.output:
        raise ModelLoadError(f"{label}: graph has no outputs (truncated or not a model)")
    _check(proto, label)
    _drop_initializer_inputs(proto)
    _clear_negative_dims(proto)
    _name_nodes(proto)
    if opset != INTERNAL_OPSET:
        proto = _convert_opset(proto, label, opset)
    if fix_batch:
        _fix_batch(proto)
    if infer:
        proto = infer_shapes(proto, label)
    return proto


def _check(proto: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{label}: invalid ONNX model ({first})") from e


def _drop_initializer_inputs(proto: onnx.ModelProto) -> None:
    # Old exporters list weights as graph inputs too; they are constants, not feeds.
    inits = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in inits]
    if len(keep) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(keep)


def _clear_negative_dims(proto: onnx.ModelProto) -> None:
    # Some exporters (Paddle) write -1 for "unknown"; ONNX wants the dim left empty.
    graph = proto.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()


def _name_nodes(proto: onnx.ModelProto) -> None:
    # Reports and errors name nodes, so every node needs a unique name.
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _convert_opset(proto: onnx.ModelProto, label: str, opset: int) -> onnx.ModelProto:
    return convert_opset(proto, label, opset, INTERNAL_OPSET)


def _fix_batch(proto: onnx.ModelProto) -> None:
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    # Stale symbolic shapes of intermediates would contradict the new concrete batch.
    del proto.graph.value_info[:]
    for value in proto.graph.output:
        value.type.tensor_type.ClearField("shape")


def infer_shapes(proto: onnx.ModelProto, label: str = "<model>") -> onnx.ModelProto:
    """ONNX shape inference with data propagation; failures become `ModelLoadError`."""
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as e:  # inference errors surface as several exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{label}: shape inference failed ({first})") from e


def from_proto(proto: onnx.ModelProto, source: str | None = None) -> Model:
    """Wrap a (normalized) protobuf into the IR."""
    graph = gs.import_onnx(proto)
    metadata = {p.key: p.value for p in proto.metadata_props}
    return Model(graph, default_opset(proto), metadata, source)


SKELETON_MIN_SIZE = 64
"""Constants with at least this many elements become graph inputs of a skeleton export."""


def to_proto(model: Model, *, skeleton: bool = False) -> onnx.ModelProto:
    """Export the IR as a `ModelProto` (without touching the IR).

    Args:
        model: The IR model.
        skeleton: Export large constants as typed graph inputs instead of initializers:
            enough for the ONNX checker and shape inference, without copying weights.
    """
    graph = model.graph.copy()
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    if skeleton:
        _weights_to_inputs(graph)
    graph.opset = model.opset
    proto = gs.export_onnx(graph, do_type_check=True)
    proto.ir_version = max(proto.ir_version, 8) if model.opset >= 15 else proto.ir_version
    del proto.opset_import[:]
    proto.opset_import.extend([onnx.helper.make_opsetid("", model.opset)]
                              + _extra_domains(model.graph))
    for key, value in sorted(model.metadata.items()):
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "npuc"
    return proto


def _weights_to_inputs(graph: gs.Graph) -> None:
    for name, tensor in list(graph.tensors().items()):
        if isinstance(tensor, gs.Constant) and tensor.values.size >= SKELETON_MIN_SIZE:
            stub = gs.Variable(name, dtype=tensor.dtype, shape=list(tensor.shape))
            for node in list(tensor.outputs):
                node.inputs = [stub if t is tensor else t for t in node.inputs]
            graph.inputs.append(stub)


def _extra_domains(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    domains = sorted({n.domain for n in graph.nodes if n.domain not in (None, "", "ai.onnx")})
    return [onnx.helper.make_opsetid(d, 1) for d in domains]


def save_model(model: Model | onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically (temp file + rename); never overwrite the model's source.

    Returns:
        The path written.
    """
    path = Path(path)
    source = model.source if isinstance(model, Model) else None
    if source and path.resolve() == Path(source):
        raise ModelLoadError(f"{path}: refusing to overwrite the input model")
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    write_atomic(path, proto.SerializeToString())
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_hash(model: Model | onnx.ModelProto) -> str:
    """SHA-256 identifying a model, for provenance in reports and binaries.

    An IR model is hashed as its weightless skeleton followed by each large constant's name
    and raw bytes, streamed from the arrays, so hashing never holds a serialized copy of the
    weights (that copy was the memory peak of quantizing ResNet-50). A `ModelProto` is
    hashed as its deterministic serialization; the two forms of one model hash differently.
    """
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    skeleton = to_proto(model, skeleton=True)
    digest = hashlib.sha256(skeleton.SerializeToString(deterministic=True))
    tensors = model.graph.tensors()
    for value in skeleton.graph.input:
        tensor = tensors.get(value.name)
        if isinstance(tensor, gs.Constant):
            digest.update(value.name.encode())
            digest.update(_raw_bytes(np.asarray(tensor.values)))
    return digest.hexdigest()


def _raw_bytes(array: np.ndarray) -> bytes | memoryview:
    if array.dtype.hasobject:  # e.g. string constants: no buffer to view
        return repr(array.tolist()).encode()
    return memoryview(np.ascontiguousarray(array)).cast("B")


def _copy_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy
