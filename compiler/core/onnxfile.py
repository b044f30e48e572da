"""ONNX files with large weights: read and write them without protobuf copies of the weights.

A protobuf `ModelProto` holds every weight as bytes; checking, converting, shape-inferring
or serializing it copies them all again (loading used to peak at about 5x the model's
size). Here weights live in numpy arrays from the first read to the last write:

* `read_lean`: the file is memory-mapped and walked at the protobuf wire level; the main
  graph's large `raw_data` payloads are cut out, so the parser only sees the weightless
  skeleton, and each payload is read (`readinto`, one copy) straight into an array.
  External data is read the same way, from files inside the model's folder only.
* `write_lean`: the skeleton is serialized and each weight's `raw_data` is spliced in while
  writing, streamed from the arrays. A model larger than `MAX_INLINE_BYTES` (protobuf's
  2 GB limit) is written with its weights in `<name>.data` next to it instead.

Files are written atomically (temporary file in the same folder, then rename), and never
over something that is not a regular file.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper, helper

from compiler.core.errors import ConfigError, ModelLoadError
from compiler.core.onnxwire import (
    GRAPH_INITIALIZER,
    LEN,
    MODEL_GRAPH,
    TENSOR_RAW_DATA,
    Field,
    WireError,
    fields,
    len_key,
    only_graph,
    strip_weights,
)

MAX_INLINE_BYTES = 2**31 - 1
"""Largest model written as one `.onnx` file (protobuf cannot parse more); tests lower it."""

DETACH_BYTES = 4096
"""Initializers with more raw bytes than this are kept out of the protobuf, in arrays."""

STREAM_BYTES = 1024
"""When writing, initializers with more bytes than this are streamed (or go external)."""

EXTERNAL_ALIGN = 64
"""Alignment of each tensor in an external data file written here."""

# dtypes whose raw_data is exactly the little-endian numpy buffer
_PLAIN = {getattr(onnx.TensorProto, n): np.dtype(d).newbyteorder("<") for n, d in (
    ("FLOAT", "float32"), ("DOUBLE", "float64"), ("FLOAT16", "float16"), ("INT8", "int8"),
    ("INT16", "int16"), ("INT32", "int32"), ("INT64", "int64"), ("UINT8", "uint8"),
    ("UINT16", "uint16"), ("UINT32", "uint32"), ("UINT64", "uint64"), ("BOOL", "bool"))}


def is_plain(dtype: np.dtype) -> bool:
    """True when an array of `dtype` is written as raw_data byte for byte."""
    return any(np.dtype(dtype) == d for d in _PLAIN.values())


def raw_bytes(array: np.ndarray) -> bytes:
    """The raw_data of `array` (a copy), for code that needs a complete TensorProto."""
    return bytes(_buffer(array))


# -- reading -------------------------------------------------------------------------------

def parse_proto(data, label: str) -> onnx.ModelProto:
    """Parse serialized ONNX bytes, turning protobuf failures into one-line errors."""
    if not len(data):
        raise ModelLoadError(f"{label}: empty file, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{label}: not an ONNX model or truncated ({e})") from e
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{label}: not an ONNX model (no graph or opset)")
    bad = non_utf8_field(proto)
    if bad:
        raise ModelLoadError(f"{label}: field {bad} is not UTF-8 text (corrupt file)")
    return proto


def non_utf8_field(msg: Message) -> str | None:
    """The first string field of `msg` (recursively) holding non-UTF-8 bytes, or None.

    ONNX is proto2, which does not enforce UTF-8: protobuf hands such a "string" over as
    bytes, and names, op types or metadata of that kind break everything downstream.
    """
    for desc, value in msg.ListFields():
        if desc.type == FieldDescriptor.TYPE_STRING:
            values = value if desc.is_repeated else [value]
            if any(isinstance(v, bytes) for v in values):
                return desc.full_name
        elif desc.type == FieldDescriptor.TYPE_MESSAGE:
            children = value if desc.is_repeated else [value]
            for child in children:
                found = non_utf8_field(child)
                if found:
                    return found
    return None


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    if not path.is_file():  # a fifo or device would block or never end
        raise ModelLoadError(f"{path}: not a regular file, expected an .onnx file")


def read_lean(path: Path, *, constants: bool = False
              ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Read an ONNX file as (skeleton, arrays): big main-graph initializers are arrays.

    The skeleton's initializers named in `arrays` carry no data (name, dims, type only);
    `detach` turns them into typed graph inputs. Other external data (subgraphs, Constant
    attributes) is loaded into the skeleton. External data must be inside the model's folder.

    Args:
        path: The `.onnx` file.
        constants: Also lift the main graph's Constant nodes with large values (exporters
            such as Paddle keep every weight in one): each becomes a data-less initializer
            named after its output, its value an array (`lift_constants`).

    Raises:
        ModelLoadError: Missing/unreadable/non-ONNX/truncated file or unsafe external data.
    """
    _check_path(path)
    consts: dict[int, tuple[int, int]] | None = {} if constants else None
    try:
        with open(path, "rb") as f:
            proto, cut = _parse_stripped(f, path, consts)
            arrays = {}
            for index, (offset, length) in sorted(cut.items()):
                tensor = proto.graph.initializer[index]
                arrays.update(_take(tensor, f, offset, length, path, path))
            lifted = {}
            for index, (offset, length) in sorted((consts or {}).items()):
                node = proto.graph.node[index]
                for array in _take(node.attribute[0].t, f, offset, length, path, path).values():
                    lifted[index] = array  # none for odd dtypes: _take put the data back
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from e
    arrays.update(_read_external(proto, path))
    arrays.update(lift_constants(proto, lifted, set(arrays)))
    return proto, arrays


def lift_constants(proto: onnx.ModelProto, values: dict[int, np.ndarray],
                   taken: set[str]) -> dict[str, np.ndarray]:
    """Constant nodes whose value was cut out become data-less initializers, in place.

    Lifting keeps the function: a Constant node and an initializer of the same name are the
    same value. A node is lifted when the main graph reads its single output and that name
    is not a graph output, input, initializer or one of `taken`, and the model has no local
    functions (inlining them renumbers nodes); any other node gets its data back. Nodes are
    named first (`name_nodes`), so removing some does not change the names of the others.

    Args:
        proto: The skeleton, whose Constant nodes at the indices of `values` lack their data.
        values: {node index: the node's value}.
        taken: Names already used by detached weights.

    Returns:
        {output name: value} of the lifted nodes.
    """
    graph = proto.graph
    read = {name for node in graph.node for name in node.input}
    blocked = taken | {t.name for t in graph.initializer} | {v.name for v in graph.input} \
        | {v.name for v in graph.output}
    lifted: dict[int, str] = {}
    for index, array in values.items():
        node = graph.node[index]
        out = node.output[0] if len(node.output) == 1 else ""
        if proto.functions or out not in read or out in blocked or out in lifted.values():
            node.attribute[0].t.raw_data = raw_bytes(array)
        else:
            lifted[index] = out
    if lifted:
        name_nodes(proto)
    for index in sorted(lifted, reverse=True):
        tensor = graph.node[index].attribute[0].t
        graph.initializer.add(name=lifted[index], dims=tensor.dims, data_type=tensor.data_type)
        del graph.node[index]
    return {out: values[index] for index, out in lifted.items()}


def name_nodes(proto: onnx.ModelProto) -> None:
    """Give every main-graph node a unique name: `<op>_<index>` where it has none (or a taken one).

    Reports and errors name nodes. Names already given are kept, so calling it again changes
    nothing.
    """
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def external_files(path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (inside its folder).

    For output-path checks, which must not replace a model's weights; [] when the file
    cannot be read (loading it reports why).
    """
    try:
        with open(path, "rb") as f:
            proto, _ = _parse_stripped(f, path)
        return sorted({external_file(path, t) for t in external_data_helper._get_all_tensors(
            proto) if external_data_helper.uses_external_data(t)})
    except (OSError, ModelLoadError):
        return []


def _parse_stripped(f: BinaryIO, path: Path,
                    constants: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            skeleton, cut = strip_weights(buf, DETACH_BYTES, constants)
        except WireError:  # let the protobuf parser give its own error (or succeed)
            if constants:
                constants.clear()
            return parse_proto(buf[:], str(path)), {}
    return parse_proto(skeleton, str(path)), cut


def _take(tensor: onnx.TensorProto, f: BinaryIO, offset: int, length: int, path: Path,
          source: Path) -> dict[str, np.ndarray]:
    """Read a tensor's bytes into an array ({name: array}); odd dtypes go back into it."""
    dtype = _PLAIN.get(tensor.data_type)
    shape = tuple(tensor.dims)
    if dtype is None or int(np.prod(shape)) * dtype.itemsize != length:
        tensor.raw_data = _read_exact(f, offset, length, tensor, path, source)
        return {}
    array = np.empty(shape, dtype)
    f.seek(offset)
    if f.readinto(memoryview(array).cast("B")) != length:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: {source.name} is truncated")
    return {tensor.name: array}


def _read_exact(f: BinaryIO, offset: int, length: int, tensor: onnx.TensorProto, path: Path,
                source: Path) -> bytes:
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: {source.name} is truncated")
    return data


def external_file(path: Path, tensor: onnx.TensorProto) -> Path:
    """The external data file of `tensor`, checked to be a file inside the model's folder.

    Raises:
        ModelLoadError: Absolute or escaping location, or a missing file (one line).
    """
    folder = path.resolve().parent
    location = {e.key: e.value for e in tensor.external_data}.get("location", "")
    if not location or "\0" in location or os.path.isabs(location) or Path(location).drive:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} has external data at "
                             f"{location!r}: not a path relative to the model's folder")
    target = (folder / location).resolve()
    if os.path.commonpath([folder, target]) != str(folder):
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} has external data outside the "
                             f"model's folder ({location!r}); refusing to read it")
    if not target.is_file():
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: external data file "
                             f"{location!r} missing")
    return target


def _external_span(tensor: onnx.TensorProto, target: Path, path: Path) -> tuple[int, int]:
    info = {e.key: e.value for e in tensor.external_data}
    size = target.stat().st_size
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError as e:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: bad external data offset or "
                             f"length ({e})") from e
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: external data "
                             f"[{offset}, {offset + length}) beyond the end of {target.name} "
                             f"({size} bytes)")
    return offset, length


def _read_external(proto: onnx.ModelProto, path: Path) -> dict[str, np.ndarray]:
    """Main-graph external initializers -> arrays; other external tensors loaded in place."""
    arrays = {}
    for tensor in proto.graph.initializer:  # small ones stay in the skeleton: shape inference
        if external_data_helper.uses_external_data(tensor):  # may need their values
            arrays.update(_read_external_tensor(tensor, path, keep=None))
    for tensor in external_data_helper._get_all_tensors(proto):  # subgraphs, attributes
        if external_data_helper.uses_external_data(tensor):
            _read_external_tensor(tensor, path, keep=True)
    return arrays


def _read_external_tensor(tensor: onnx.TensorProto, path: Path,
                          keep: bool | None) -> dict[str, np.ndarray]:
    """Read one external tensor: into an array, or into raw_data (`keep`, odd dtypes).

    `keep=None` keeps it when it has at most `DETACH_BYTES`.
    """
    target = external_file(path, tensor)
    offset, length = _external_span(tensor, target, path)
    keep = length <= DETACH_BYTES if keep is None else keep
    try:
        with open(target, "rb") as f:
            if keep:
                tensor.raw_data = _read_exact(f, offset, length, tensor, path, target)
                arrays = {}
            else:
                arrays = _take(tensor, f, offset, length, path, target)
    except OSError as e:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r}: cannot read "
                             f"{target.name} ({e.strerror or e})") from e
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    return arrays


def detach(proto: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Replace the initializers named in `arrays` by typed graph inputs, in place.

    Checker, opset conversion and shape inference then run on the weightless skeleton.
    IR v3 files already list initializers as inputs: those entries are replaced.
    """
    graph = proto.graph
    keep_inits = [t for t in graph.initializer if t.name not in arrays]
    keep_inputs = [i for i in graph.input if i.name not in arrays]
    stubs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                           list(a.shape)) for n, a in arrays.items()]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    del graph.input[:]
    graph.input.extend(keep_inputs + stubs)


def detach_from_proto(proto: onnx.ModelProto,
                      min_bytes: int = DETACH_BYTES) -> tuple[onnx.ModelProto, dict]:
    """(skeleton copy, arrays) of an in-memory model; `proto` itself is not modified.

    Only the large main-graph initializers are copied into arrays; the skeleton is built
    without copying them, so the peak is the source plus one copy of the weights.
    """
    light = onnx.ModelProto()
    graph = proto.graph
    for desc, value in proto.ListFields():
        if desc.name != "graph":
            _assign(light, desc, value)
    for desc, value in graph.ListFields():
        if desc.name != "initializer":
            _assign(light.graph, desc, value)
    arrays = {}
    for tensor in graph.initializer:
        if _payload_bytes(tensor) > min_bytes and tensor.data_type in _PLAIN:
            arrays[tensor.name] = onnx.numpy_helper.to_array(tensor).copy()
            light.graph.initializer.add(name=tensor.name, dims=tensor.dims,
                                        data_type=tensor.data_type)
        else:
            light.graph.initializer.add().CopyFrom(tensor)
    return light, arrays


def skeleton_copy(proto: onnx.ModelProto, min_bytes: int = DETACH_BYTES) -> onnx.ModelProto:
    """A copy of `proto` whose large initializers are typed graph inputs (no data copied).

    For checks of a model that is otherwise used as it is (shape inference, sizes).
    """
    light = onnx.ModelProto()
    for desc, value in proto.ListFields():
        if desc.name != "graph":
            _assign(light, desc, value)
    for desc, value in proto.graph.ListFields():
        if desc.name not in ("initializer", "input"):
            _assign(light.graph, desc, value)
    large = {t.name for t in proto.graph.initializer if _payload_bytes(t) > min_bytes}
    light.graph.input.extend(i for i in proto.graph.input if i.name not in large)
    for tensor in proto.graph.initializer:
        if tensor.name in large:
            light.graph.input.append(helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            light.graph.initializer.add().CopyFrom(tensor)
    return light


def _assign(msg, desc, value) -> None:
    if desc.is_repeated:
        getattr(msg, desc.name).extend(value)
    elif desc.message_type:
        getattr(msg, desc.name).CopyFrom(value)
    else:
        setattr(msg, desc.name, value)


def _payload_bytes(tensor: onnx.TensorProto) -> int:
    if external_data_helper.uses_external_data(tensor):
        return 0  # not loaded: handled by the caller's external-data path
    return max(len(tensor.raw_data), 4 * len(tensor.float_data), 8 * len(tensor.int64_data),
               4 * len(tensor.int32_data), 8 * len(tensor.double_data))


# -- writing -------------------------------------------------------------------------------

def check_replaceable(path: Path) -> None:
    """Refuse to replace anything but a regular file (directory, symlink, device, fifo).

    Raises:
        ConfigError: One line naming the path and what it is.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a symbolic link"
                if stat.S_ISLNK(mode) else "not a regular file")
        raise ConfigError(f"{path}: exists and is {kind}; refusing to replace it")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file object that becomes `path` (atomic rename) when the block succeeds.

    Raises:
        ConfigError: `path` exists as anything but a regular file, or cannot be written
            (read-only or missing folder, name too long, disk full): one line naming it.
    """
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be written ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs are ordinary files
        check_replaceable(path)  # again: something may have appeared there meanwhile
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot be written ({e.strerror or e})") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes via a temporary file in the same folder and an atomic rename."""
    with atomic_file(path) as f:
        f.write(data)


def data_path(path: Path) -> Path:
    """Where the external data of a model written to `path` goes: `<name>.data` beside it."""
    return path.with_name(path.name + ".data")


def write_lean(path: Path, skeleton: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> list[Path]:
    """Write `skeleton` with the arrays as its data-less initializers' raw_data.

    Inline (one file) while the result fits in `MAX_INLINE_BYTES`, else with every array in
    `<name>.data` next to `path` (`location` relative to the model's folder).

    Args:
        path: The `.onnx` file to write.
        skeleton: The model; initializers named in `arrays` carry name, dims and type only.
            Modified in place when the weights go to external data.
        arrays: The weights, by initializer name.

    Returns:
        The files written (the model first).
    """
    index = {i: arrays[t.name] for i, t in enumerate(skeleton.graph.initializer)
             if t.name in arrays}
    data = skeleton.SerializeToString()
    pieces = _inline_pieces(data, index)
    if sum(_size(p) for p in pieces) <= MAX_INLINE_BYTES:
        with atomic_file(path) as f:
            for piece in pieces:
                f.write(piece if isinstance(piece, bytes) else _buffer(piece))
        return [path]
    del data, pieces
    return _write_external(path, skeleton, index)


def _buffer(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    return memoryview(array).cast("B") if array.size else memoryview(b"")


def _size(piece: bytes | np.ndarray) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.nbytes


def _inline_pieces(data: bytes, index: dict[int, np.ndarray]) -> list[bytes | np.ndarray]:
    """The serialized model as pieces, each indexed initializer followed by its raw_data."""
    pieces: list[bytes | np.ndarray] = []
    for f, is_graph in only_graph(data, 0, len(data)):
        if not is_graph:
            pieces.append(data[f.head:f.end])
            continue
        body = _graph_pieces(data, f, index)
        pieces += [len_key(MODEL_GRAPH, sum(_size(p) for p in body)), *body]
    return pieces


def _graph_pieces(data: bytes, graph: Field, index: dict[int, np.ndarray]) -> list:
    pieces, i = [], 0
    for f in fields(data, graph.start, graph.end):
        is_init = f.number == GRAPH_INITIALIZER and f.wire == LEN
        if is_init and i in index:
            array, tensor = index[i], data[f.start:f.end]
            raw_key = len_key(TENSOR_RAW_DATA, array.nbytes)
            pieces += [len_key(GRAPH_INITIALIZER, len(tensor) + len(raw_key) + array.nbytes),
                       tensor + raw_key, array]
        else:
            pieces.append(data[f.head:f.end])
        i += is_init
    return pieces


def _write_external(path: Path, skeleton: onnx.ModelProto,
                    index: dict[int, np.ndarray]) -> list[Path]:
    target = data_path(path)
    check_replaceable(path)
    offset = 0
    with atomic_file(target) as f:
        for i, array in index.items():
            pad = -offset % EXTERNAL_ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(_buffer(array))
            _point_to(skeleton.graph.initializer[i], target.name, offset, array.nbytes)
            offset += array.nbytes
    with atomic_file(path) as f:
        f.write(skeleton.SerializeToString())
    return [path, target]


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
