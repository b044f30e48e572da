"""Read a PyTorch ``.pth`` state_dict into numpy arrays without importing torch.

Two on-disk layouts exist:

- the zip layout (torch >= 1.6): ``<prefix>/data.pkl`` plus one raw little-endian file per
  storage at ``<prefix>/data/<key>``;
- the legacy layout (torch < 1.6, e.g. the EfficientNet-Lite0 package): five concatenated
  records — magic number, protocol version and system info pickles, the main pickle, a pickled
  list of storage keys — followed by each storage as an int64 element count plus raw bytes.

Both pickles are read by `SafeUnpickler`, whose `find_class` resolves only the handful of
globals a state_dict needs, each mapped to a local function that builds numpy arrays. Any other
global (``os.system``, ``builtins.eval``, ...) raises `ModelLoadError` before it can be called,
so loading an untrusted file never executes code from it. The stand-ins are inert: the
allow-list is a read-only mapping and every object a pickle can reach refuses BUILD
(`__setstate__`), so one checkpoint cannot change how the next one decodes. Sizes are checked
before anything is allocated: a tensor may not cover more elements than its storage
(overlapping stride-0 views), and a storage may not claim more bytes than its file holds.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from compiler.core.errors import ModelLoadError

logger = logging.getLogger(__name__)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "BFloat16Storage": "<u2",
}


class _Inert:
    """Base of everything a pickle can reach: BUILD (``__setstate__``) is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ModelLoadError(f"pickle tries to modify a {type(self).__name__.strip('_')} "
                             "(BUILD on an allowed object)")


class _StorageType(_Inert):
    """Stand-in for ``torch.<X>Storage``: only its element dtype matters."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self.name} is read-only")


class _Callable(_Inert):
    """An allowed global function, wrapped so a pickle cannot set attributes on it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _Storage(_Inert):
    """A flat typed buffer; `data` is filled when the raw bytes are read."""

    __slots__ = ("stype", "key", "numel", "data", "base")

    def __init__(self, stype: _StorageType, key: str, numel: int) -> None:
        self.stype, self.key, self.numel = stype, key, numel
        self.data: np.ndarray | None = None
        self.base: tuple[_Storage, int] | None = None  # legacy storage views: (root, offset)

    def array(self) -> np.ndarray:
        """Return the flat element array (a slice of the root storage for views)."""
        if self.base is not None:
            root, offset = self.base
            return root.array()[offset:offset + self.numel]
        if self.data is None:
            raise ModelLoadError(f"storage {self.key} has no data in the checkpoint")
        return self.data


class _LazyTensor(_Inert):
    """A tensor whose storage bytes may not have been read yet (legacy layout)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        """Return a contiguous copy, after checking the view stays inside its storage."""
        flat = self.storage.array()
        self._check_bounds(flat.size)
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride],
            writeable=False)
        out = np.array(view, order="C")
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def _check_bounds(self, numel: int) -> None:
        # as_strided trusts its arguments, so a hostile size/stride must be caught here.
        where = f"tensor in storage {self.storage.key}"
        if len(self.size) != len(self.stride):
            raise ModelLoadError(f"{where}: size/stride ranks differ")
        if min((*self.size, *self.stride, self.offset), default=0) < 0:
            raise ModelLoadError(f"{where}: negative size, stride or offset")
        span = sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        last = self.offset + span if 0 not in self.size else self.offset - 1
        if last >= numel:
            raise ModelLoadError(f"{where} exceeds the storage")
        if int(np.prod(self.size, dtype=object)) > max(numel, 1):
            # Only overlapping (stride-0) views cover more elements than they store; a tiny
            # file could otherwise ask for terabytes here.
            raise ModelLoadError(f"{where}: {self.size} covers more elements than the "
                                 f"storage holds ({numel})")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       *_ignored: Any) -> _LazyTensor:
    """Safe replacement of ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks ignored)."""
    if not isinstance(storage, _Storage):
        raise ModelLoadError("_rebuild_tensor_v2 called without a storage reference")
    return _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                       tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """Safe replacement of ``torch._utils._rebuild_parameter``: a Parameter is its tensor."""
    return data


def _allowed_globals() -> MappingProxyType:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _Callable(collections.OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, np.dtype(dtype))
    return MappingProxyType(allowed)


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only state_dict globals and delegates storage references.

    Args:
        file: Binary stream positioned at a pickle.
        source: File name used in error messages.
        load_storage: Called with ``(storage_type, key, numel)`` for each storage reference.
        allow_globals: False for the legacy header pickles, which hold plain values only.
    """

    def __init__(self, file: io.BufferedIOBase, source: str, load_storage=None,
                 allow_globals: bool = True) -> None:
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage
        self._allow_globals = allow_globals

    def find_class(self, module: str, name: str) -> Any:
        """Return the local stand-in for an allowed global, else refuse the file."""
        target = _ALLOWED.get((module, name)) if self._allow_globals else None
        if target is None:
            raise ModelLoadError(f"{self._source}: forbidden global {module}.{name} in pickle")
        return target

    def persistent_load(self, pid: Any) -> Any:
        """Resolve ``('storage', type, key, location, numel[, view_metadata])`` references."""
        ok = (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
              and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0)
        if not ok or self._load_storage is None:
            raise ModelLoadError(f"{self._source}: unsupported persistent id {pid!r:.80}")
        key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
        storage = self._load_storage(pid[1], key, pid[4])
        view = pid[5] if len(pid) == 6 else None
        return storage if view is None else _storage_view(storage, view, self._source)


def _storage_view(root: _Storage, view: Any, source: str) -> _Storage:
    """Legacy storage views: ``(view_key, offset, view_numel)`` into a root storage."""
    if not (isinstance(view, tuple) and len(view) == 3
            and all(isinstance(v, int) for v in view[1:])):
        raise ModelLoadError(f"{source}: malformed storage view {view!r:.80}")
    _, offset, numel = view
    if offset < 0 or numel < 0 or offset + numel > root.numel:
        raise ModelLoadError(f"{source}: storage view outside storage {root.key}")
    out = _Storage(root.stype, f"{root.key}[{offset}:]", numel)
    out.base = (root, offset)
    return out


def _materialize(obj: Any) -> Any:
    """Replace every `_LazyTensor` in nested dicts/lists/tuples by a numpy array."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ModelLoadError(f"{path}: expected one <prefix>/data.pkl in the zip archive")
        prefix = pkls[0][: -len("data.pkl")]
        order = "<"
        if f"{prefix}byteorder" in zf.namelist():
            order = "<" if zf.read(f"{prefix}byteorder").strip() == b"little" else ">"

        def load_storage(stype: _StorageType, key: str, numel: int) -> _Storage:
            storage = _Storage(stype, key, numel)
            name = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(name)
            except KeyError as exc:
                raise ModelLoadError(f"{path}: missing storage {name}") from exc
            need = numel * stype.dtype.itemsize
            if info.file_size != need:
                # Checked before decompressing: a zip-bombed entry never gets inflated.
                raise ModelLoadError(f"{path}: storage {name} holds {info.file_size:,} bytes, "
                                     f"the pickle says {need:,}")
            raw = zf.read(name)
            storage.data = _decode(raw, stype, numel, order, f"{path}:{key}")
            return storage

        with zf.open(pkls[0]) as fh:
            return SafeUnpickler(io.BytesIO(fh.read()), str(path), load_storage).load()


def _decode(raw: bytes, stype: _StorageType, numel: int, order: str, where: str) -> np.ndarray:
    dtype = stype.dtype.newbyteorder(order) if stype.dtype.itemsize > 1 else stype.dtype
    if len(raw) < numel * dtype.itemsize:
        raise ModelLoadError(f"{where}: storage has {len(raw)} bytes, "
                             f"needs {numel * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype, count=numel).astype(stype.dtype.newbyteorder("="))


def _load_legacy(path: Path) -> Any:
    stream = io.BytesIO(path.read_bytes())
    header = [SafeUnpickler(stream, str(path), allow_globals=False).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint (bad magic or protocol)")
    little = not isinstance(header[2], dict) or header[2].get("little_endian", True)
    storages: dict[str, _Storage] = {}

    def load_storage(stype: _StorageType, key: str, numel: int) -> _Storage:
        return storages.setdefault(key, _Storage(stype, key, numel))

    result = SafeUnpickler(stream, str(path), load_storage).load()
    keys = SafeUnpickler(stream, str(path), allow_globals=False).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ModelLoadError(f"{path}: storage key list does not match the pickled tensors")
    for key in keys:
        _read_legacy_storage(stream, storages[key], "<" if little else ">", path)
    return result


def _read_legacy_storage(stream: io.BytesIO, storage: _Storage, order: str, path: Path) -> None:
    head = stream.read(8)
    if len(head) != 8:
        raise ModelLoadError(f"{path}: truncated before storage {storage.key}")
    (numel,) = struct.unpack(f"{order}q", head)
    if numel != storage.numel:
        raise ModelLoadError(f"{path}: storage {storage.key} has {numel} elements, "
                             f"pickle says {storage.numel}")
    left = len(stream.getbuffer()) - stream.tell()
    if numel * storage.stype.dtype.itemsize > left:
        raise ModelLoadError(f"{path}: storage {storage.key} claims {numel:,} elements, "
                             f"the file has {left:,} bytes left")
    raw = stream.read(numel * storage.stype.dtype.itemsize)
    storage.data = _decode(raw, storage.stype, numel, order, f"{path}:{storage.key}")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a ``.pth`` state_dict (zip or legacy layout) as ``{name: numpy array}``.

    Args:
        path: The checkpoint file.

    Returns:
        An ordered mapping from parameter/buffer name to a contiguous numpy array.

    Raises:
        ModelLoadError: The file is missing, malformed, or its pickle references any global
            outside the state_dict allow-list (nothing from the file is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint file not found")
    try:
        raw = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except ModelLoadError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, zipfile.BadZipFile, struct.error, RecursionError,
            OverflowError, MemoryError) as exc:
        raise ModelLoadError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    state = _materialize(raw)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: checkpoint holds a {type(state).__name__}, not a state_dict")
    logger.debug("loaded %d tensors from %s", len(state), path)
    return collections.OrderedDict(state)
