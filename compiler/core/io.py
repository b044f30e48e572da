"""Loading and saving models: the boundary between ONNX files/protobufs and the IR."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx_graphsurgeon as gs

from compiler.core import onnxfile
from compiler.core.errors import ConfigError, ModelLoadError
from compiler.core.float16 import upcast_half
from compiler.core.ir import Model, freeze
from compiler.core.model_check import check_model
from compiler.core.onnxfile import parse_proto as parse_proto
from compiler.core.onnxfile import write_atomic as write_atomic
from compiler.core.opset import convert_opset
from compiler.core.shapes import (
    FLAG,
    KEY,
    MAX_DIM,
    DataShapes,
    ShapeSpec,
    format_dims,
    parse_input_shapes,
)
from compiler.core.weight_check import check_weights_finite

log = logging.getLogger(__name__)

INTERNAL_OPSET = 17
# Opsets 1-6 go through the version converter in two steps (see opset.py); the newest is
# whatever the installed onnx defines, converted down to the internal opset.
MIN_OPSET, MAX_OPSET = 1, onnx.defs.onnx_opset_version()
ModelSource = str | os.PathLike | onnx.ModelProto | Model
ShapeArg = ShapeSpec | str | list | None


def load_model(src: ModelSource, *, fix_batch: bool = False, infer: bool = True,
               input_shapes: ShapeArg = None, bind: bool = False,
               keep_batch: bool = False) -> Model:
    """Load a model into the IR: parse, check, upgrade to the internal opset, infer shapes.

    Large weights never pass through the protobuf checks: they are read into numpy arrays
    (`compiler.core.onnxfile.read_lean`; from files, also the values of large Constant
    nodes, which become initializers), the checker, opset conversion and shape inference
    run on the weightless skeleton, and the arrays become the IR's constants. Peak memory
    is about one copy of the weights.

    Args:
        src: Path to an `.onnx` file (external data inside its folder is read too), a
            `ModelProto`, or an IR `Model` (returned as a copy sharing its frozen weights).
        fix_batch: Replace a symbolic or unknown leading (batch) dimension of every input by 1.
        infer: Run ONNX shape inference so every tensor carries its shape.
        input_shapes: The user's input shapes (`compiler.core.shapes`: `{name: dims}`, a
            `1x3x224x224` string, ...); giving them implies `bind`.
        bind: Make every input dim concrete (`bind_input_shapes`): the given shapes, then a
            symbolic batch becomes 1; any other symbolic dim is an error naming the flag.
        keep_batch: With `bind`, leave a symbolic batch the shapes do not give symbolic
            (step commands whose output model keeps the exporter's dynamic batch).

    Returns:
        The IR model; the source is never modified.

    Raises:
        ModelLoadError: Missing/unreadable/non-ONNX/truncated file, unsafe external data,
            unsupported opset, or a graph that fails the ONNX checker.
        ConfigError: An input-shape spec that does not fit the model, or a symbolic
            non-batch input dim left unbound (one line naming the flag, input and dim).
    """
    if isinstance(src, Model) and not (bind or input_shapes):
        return src.copy()
    path = None
    if isinstance(src, Model):  # binding re-runs normalization and inference
        (proto, arrays), label = _skeleton_of(src), src.source or "<model>"
    elif isinstance(src, onnx.ModelProto):
        (proto, arrays), label = onnxfile.detach_from_proto(src), "<ModelProto>"
    else:
        path = Path(src)
        (proto, arrays), label = read_lean(path), str(path)
    onnxfile.detach(proto, arrays)
    _reattach_needed(proto, arrays)
    proto = normalize_proto(proto, label, fix_batch=fix_batch, infer=infer,
                            input_shapes=input_shapes, bind=bind, keep_batch=keep_batch,
                            weights=arrays.keys())
    source = src.source if isinstance(src, Model) else None
    model = attach(from_proto(proto, source=str(path.resolve()) if path else source), arrays)
    check_weights_finite(model, label)
    return model


def read_lean(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`onnxfile.read_lean` (Constant nodes lifted too), also when the file could not be split.

    Lifting large Constant nodes keeps their values out of the protobuf as well: the
    checker, opset converter and shape inference each copy the protobuf they are given.
    """
    proto, arrays = onnxfile.read_lean(path, constants=True)
    if not arrays and any(len(t.raw_data) > onnxfile.DETACH_BYTES
                          for t in proto.graph.initializer):
        proto, arrays = onnxfile.detach_from_proto(proto)
    return proto, arrays


def read_proto(path: Path) -> onnx.ModelProto:
    """Read an ONNX file as one `ModelProto` (weights included, external data loaded).

    External data is read only from inside the model's folder.
    """
    proto, arrays = onnxfile.read_lean(path)
    for tensor in proto.graph.initializer:
        if tensor.name in arrays:
            tensor.raw_data = onnxfile.raw_bytes(arrays.pop(tensor.name))
    return proto


def attach(model: Model, arrays: dict[str, np.ndarray]) -> Model:
    """Turn the graph inputs standing for detached weights into constants, in place."""
    for tensor in model.graph.inputs:
        if tensor.name in arrays:
            tensor.to_constant(arrays[tensor.name])
    model.graph.inputs = [t for t in model.graph.inputs if t.name not in arrays]
    return model


def _skeleton_of(model: Model) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The IR model's weightless export and its (shared, frozen) weight arrays."""
    proto = to_proto(model, skeleton=True)
    tensors = model.graph.tensors()
    arrays = {}
    for value in proto.graph.input:
        tensor = tensors.get(value.name)
        if isinstance(tensor, gs.Constant):
            arrays[value.name] = freeze(np.asarray(tensor.values))
    return proto, arrays


def _needs_values(node: onnx.NodeProto) -> bool:
    # opset.py rewrites BatchNormalization(spatial=0) from its statistics' values
    return node.op_type == "BatchNormalization" and any(
        a.name == "spatial" and a.i == 0 for a in node.attribute)


def _reattach_needed(proto: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Put detached weights back where opset conversion needs their values."""
    needed = {name for node in proto.graph.node if _needs_values(node)
              for name in node.input[1:] if name in arrays}
    if not needed:  # their typed inputs stay (IR v3 wants initializers listed as inputs)
        return
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(arrays.pop(n), n)
                                   for n in sorted(needed))


def default_opset(proto: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) domain."""
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 1


def normalize_proto(proto: onnx.ModelProto, label: str, *, fix_batch: bool = False,
                    infer: bool = True, input_shapes: ShapeArg = None, bind: bool = False,
                    keep_batch: bool = False, weights: Collection[str] = ()) -> onnx.ModelProto:
    """Check, upgrade to the internal opset, drop initializer inputs, fix batch, bind, infer.

    `weights` names graph inputs that hold detached weights (`qonnx.detach_weights`): never
    bound to user shapes.
    """
    opset = default_opset(proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelLoadError(
            f"{label}: unsupported opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET})")
    if not proto.graph.output:
        raise ModelLoadError(f"{label}: graph has no outputs (truncated or not a model)")
    _check(proto, label)
    proto = _inline_functions(proto, label)
    _drop_initializer_inputs(proto)
    _drop_unused_inputs(proto, label)
    _clear_negative_dims(proto)
    onnxfile.name_nodes(proto)
    if opset != INTERNAL_OPSET:
        proto = _convert_opset(proto, label, opset)
    kept = upcast_half(proto)
    if kept is not None:
        log.warning("%s: float16/bfloat16 model computed in float32%s", label,
                    f" ({', '.join(kept)} keep float16 behind a Cast)" if kept else "")
    if fix_batch:
        _fix_batch(proto)
    if bind or input_shapes:
        bind_input_shapes(proto, input_shapes, label, keep_batch=keep_batch, skip=weights)
    if infer:
        proto = infer_shapes(proto, label)
        check_model(proto, label)
    return proto


def _check(proto: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{label}: invalid ONNX model ({first})") from e


def _inline_functions(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    # The IR keeps nodes, not model-local functions: expand calls to them into their bodies.
    if not proto.functions:
        return proto
    try:
        return onnx.inliner.inline_local_functions(proto)
    except Exception as e:  # the inliner raises several types on a bad function
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{label}: cannot inline its local functions ({first})") from e


def _drop_initializer_inputs(proto: onnx.ModelProto) -> None:
    # Old exporters list weights as graph inputs too; they are constants, not feeds.
    inits = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in inits]
    if len(keep) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(keep)


def _drop_unused_inputs(proto: onnx.ModelProto, label: str) -> None:
    # Inputs no node reads (left over by editing tools) would still demand data from the
    # user and from onnxruntime; they do not change the function.
    graph = proto.graph
    used = _names_read(graph) | {o.name for o in graph.output}
    keep = [i for i in graph.input if i.name in used]
    if keep and len(keep) != len(graph.input):
        dropped = [i.name for i in graph.input if i.name not in used]
        log.warning("%s: ignoring %d graph input(s) no node reads (%s%s)", label, len(dropped),
                    ", ".join(dropped[:3]), ", ..." if len(dropped) > 3 else "")
        del graph.input[:]
        graph.input.extend(keep)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:  # If/Loop/Scan bodies read outer names implicitly
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names |= _names_read(sub)
    return names


def _clear_negative_dims(proto: onnx.ModelProto) -> None:
    # Some exporters (Paddle) write -1 for "unknown"; ONNX wants the dim left empty.
    graph = proto.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()


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
    return _export(model, _is_large if skeleton else None)


def to_lean_proto(model: Model) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The IR as (proto whose large initializers carry no data, their arrays).

    `compiler.core.onnxfile.write_lean` writes the pair as one ONNX file without ever
    holding a serialized copy of the weights.
    """
    proto = _export(model, _is_streamable)
    tensors = model.graph.tensors()
    arrays = {v.name: np.asarray(tensors[v.name].values) for v in proto.graph.input
              if isinstance(tensors.get(v.name), gs.Constant)}
    kept = [v for v in proto.graph.input if v.name not in arrays]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    for name, array in arrays.items():
        proto.graph.initializer.add(name=name, dims=array.shape,
                                    data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
    return proto, arrays


def _export(model: Model, detach: Callable[[gs.Constant], bool] | None) -> onnx.ModelProto:
    graph = model.graph.copy()  # constants are shared, not copied
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    if detach is not None:
        _weights_to_inputs(graph, detach)
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


def _is_large(tensor: gs.Constant) -> bool:
    return tensor.values.size >= SKELETON_MIN_SIZE


def _is_streamable(tensor: gs.Constant) -> bool:
    # raw_data is the array's buffer only for plain dtypes exported as themselves
    values = tensor.values
    export = getattr(tensor, "export_dtype", None)
    return (isinstance(values, np.ndarray) and values.nbytes > onnxfile.STREAM_BYTES
            and onnxfile.is_plain(values.dtype) and (export is None or export == values.dtype))


def _weights_to_inputs(graph: gs.Graph, detach: Callable[[gs.Constant], bool]) -> None:
    outputs = {id(t) for t in graph.outputs}
    for name, tensor in list(graph.tensors().items()):
        if isinstance(tensor, gs.Constant) and id(tensor) not in outputs and detach(tensor):
            stub = gs.Variable(name, dtype=tensor.dtype, shape=list(tensor.shape))
            for node in list(tensor.outputs):
                node.inputs = [stub if t is tensor else t for t in node.inputs]
            graph.inputs.append(stub)


def _extra_domains(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    domains = sorted({n.domain for n in graph.nodes if n.domain not in (None, "", "ai.onnx")})
    return [onnx.helper.make_opsetid(d, 1) for d in domains]


def save_model(model: Model | onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically (temp file + rename); never overwrite the model's source.

    A model above `compiler.core.onnxfile.MAX_INLINE_BYTES` (2 GB) keeps its weights in
    `<name>.data` next to it (`write_model` returns both files).

    Returns:
        The path of the `.onnx` file written.
    """
    return write_model(model, path)[0]


def write_model(model: Model | onnx.ModelProto, path: str | os.PathLike) -> list[Path]:
    """`save_model`, returning every file written (the model, then its external data).

    The weights are streamed from the IR's arrays into the file: no serialized copy.

    Raises:
        ModelLoadError: `path` is the model's own source file.
        ConfigError: `path` (or its data file) exists and is not a regular file.
    """
    path = Path(path)
    source = model.source if isinstance(model, Model) else None
    if source and path.resolve() == Path(source):
        raise ModelLoadError(f"{path}: refusing to overwrite the input model")
    if isinstance(model, onnx.ModelProto):
        proto, arrays = onnxfile.detach_from_proto(model, onnxfile.STREAM_BYTES)
    else:
        proto, arrays = to_lean_proto(model)
    return onnxfile.write_lean(path, proto, arrays)


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


# -- binding the user's input shapes (--input-shape / input.shape) ---------------------------

def bind_input_shapes(proto: onnx.ModelProto, shapes: ShapeArg, label: str = "<model>", *,
                      keep_batch: bool = False, skip: Collection[str] = ()) -> bool:
    """Make the input dims of `proto` concrete, in place; stale inferred shapes are dropped.

    Inputs named in `shapes` take those dims (each must agree with the model's fixed dims
    and rank); in other inputs a symbolic batch (dim 0) becomes 1 (kept symbolic with
    `keep_batch`) and any other symbolic dim is an error.

    Args:
        proto: A model whose initializers are no longer listed as inputs.
        shapes: `{name: dims}` or any form `compiler.core.shapes.parse_input_shapes` takes.
        label: The model, for messages.
        keep_batch: Leave an unbound symbolic batch symbolic (batched evaluation).
        skip: Inputs that are not data (detached weights).

    Returns:
        Whether any dim changed.

    Raises:
        ConfigError: One line naming the flag, the input and the dim.
    """
    inits = {t.name for t in proto.graph.initializer} | set(skip)
    inputs = {v.name: v for v in proto.graph.input
              if v.type.HasField("tensor_type") and v.name not in inits}
    changed = False
    if isinstance(shapes, DataShapes):
        for name, dims in _data_dims(shapes, list(inputs)).items():
            changed |= _fill_dims(inputs[name], dims)
        shapes = None
    spec = _resolve_names(_parsed(shapes), list(inputs), label)
    for name, value in inputs.items():
        if name in spec:
            changed |= _set_dims(value, spec[name], label)
        else:
            changed |= _default_dims(value, label, keep_batch)
    if changed:
        _drop_stale_shapes(proto)
    return changed


def _data_dims(shapes: DataShapes, names: list[str]) -> dict[str, tuple[int, ...]]:
    # arrays named like inputs; else, for a single input, the bare / lone / "images" array
    named = {n: tuple(shapes[n]) for n in names if n in shapes}
    if named or len(names) != 1:
        return named
    lone = next(iter(shapes.values())) if len(shapes) == 1 else None
    dims = shapes.get("", shapes.get("images", lone))
    return {names[0]: tuple(dims)} if dims else {}


def _fill_dims(value: onnx.ValueInfoProto, dims: tuple[int, ...]) -> bool:
    # only symbolic dims past the batch, and only from data of the input's rank
    tensor = value.type.tensor_type
    if not tensor.HasField("shape") or len(tensor.shape.dim) != len(dims):
        return False
    changed = False
    for i, dim in enumerate(tensor.shape.dim):
        if i and not dim.HasField("dim_value") and 0 < dims[i] <= MAX_DIM:
            dim.Clear()
            dim.dim_value = int(dims[i])
            changed = True
    return changed


def _parsed(shapes: ShapeArg) -> ShapeSpec:
    try:
        return parse_input_shapes(shapes)
    except ConfigError as e:
        raise ConfigError(f"{FLAG} {e}") from e


def _resolve_names(spec: ShapeSpec, names: list[str], label: str) -> ShapeSpec:
    if "" in spec:
        if len(names) != 1:
            raise ConfigError(
                f"{FLAG} {format_dims(spec[''])}: {label} has {len(names)} inputs "
                f"({', '.join(names)}); name it, e.g. {FLAG} {names[0] if names else 'x'}:"
                f"{format_dims(spec[''])}")
        return {names[0]: spec[""]}
    for name in spec:
        if name not in names:
            raise ConfigError(f"{FLAG} {name}:{format_dims(spec[name])}: {label} has no "
                              f"input {name!r} (inputs: {', '.join(names)})")
    return spec


def _dim_text(dim: onnx.TensorShapeProto.Dimension) -> str:
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    return dim.dim_param or "?"


def _shape_text(value: onnx.ValueInfoProto) -> str:
    return format_dims(_dim_text(d) for d in value.type.tensor_type.shape.dim)


def _set_dims(value: onnx.ValueInfoProto, dims: tuple[int, ...], label: str) -> bool:
    tensor = value.type.tensor_type
    where = f"{FLAG} {value.name}:{format_dims(dims)}"
    if tensor.HasField("shape") and len(tensor.shape.dim) != len(dims):
        raise ConfigError(f"{where}: input {value.name!r} of {label} has rank "
                          f"{len(tensor.shape.dim)} ({_shape_text(value)}), not {len(dims)}")
    old = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    for i, (was, new) in enumerate(zip(old, dims, strict=False)):
        if was is not None and was != new:
            raise ConfigError(f"{where}: dim {i} of input {value.name!r} is fixed at {was} "
                              f"in {label} ({_shape_text(value)})")
    if old == list(dims):
        return False
    tensor.shape.Clear()
    for d in dims:
        tensor.shape.dim.add().dim_value = d
    return True


def _default_dims(value: onnx.ValueInfoProto, label: str, keep_batch: bool) -> bool:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise ConfigError(f"input {value.name!r} of {label} has no shape: give it with "
                          f"{FLAG} {value.name}:DIMS (config: {KEY})")
    changed = False
    for i, dim in enumerate(tensor.shape.dim):
        if dim.HasField("dim_value"):
            continue
        if i == 0 and not keep_batch:
            dim.Clear()
            dim.dim_value = 1
            changed = True
        elif i > 0:
            raise ConfigError(_symbolic_error(value, i, label, keep_batch))
    return changed


def _symbolic_error(value: onnx.ValueInfoProto, index: int, label: str,
                    keep_batch: bool) -> str:
    dims = list(value.type.tensor_type.shape.dim)
    example = [_dim_text(d) if d.HasField("dim_value") else ("1" if i == 0 and not keep_batch
                                                              else _placeholder(d))
               for i, d in enumerate(dims)]
    return (f"input {value.name!r} of {label} has a symbolic dim {index} "
            f"({_dim_text(dims[index])!r} in {_shape_text(value)}): give the shape with "
            f"{FLAG} {value.name}:{format_dims(example)}, each letter a size (config: {KEY})")


def _placeholder(dim: onnx.TensorShapeProto.Dimension) -> str:
    # Exporters name dims "height" or "p2o.DynamicDimension.1": a short name reads as a
    # template ("HEIGHT"), anything else becomes "N".
    name = _dim_text(dim)
    return name.upper() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,11}", name) else "N"


def _drop_stale_shapes(proto: onnx.ModelProto) -> None:
    # Inferred shapes of intermediates and outputs still hold the old symbolic dims.
    del proto.graph.value_info[:]
    for value in proto.graph.output:
        value.type.tensor_type.ClearField("shape")
