"""Where a command may write: never over one of its inputs, never over a non-regular file.

Every command that writes checks its output paths here before it does any work: an output
that is the same file as an input (compared by device and inode, so `./m.onnx`, a symlink
or a hard link to the input are caught too), an existing directory where a file goes (or a
file where a folder goes), a symbolic link, a FIFO or a device is refused with one line.
The write itself (`compiler.core.onnxfile.atomic_file`) checks the path again and replaces
only regular files, by an atomic rename.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from compiler.core.errors import ConfigError
from compiler.core.onnxfile import external_files

PathLike = str | os.PathLike


def input_files(*sources: Any) -> list[Path]:
    """The existing regular files among `sources` (paths, None, dataset names, folders).

    For a folder, the regular files directly in it: an output folder that is also an input
    folder must not replace any of them. For an `.onnx` file, also its external data files.
    """
    files: list[Path] = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)) or not str(source):
            continue
        path = Path(source)
        try:
            if path.is_file():
                files.append(path)
                if path.suffix.lower() == ".onnx":
                    files.extend(external_files(path))
            elif path.is_dir():
                files.extend(p for p in path.iterdir() if p.is_file())
        except OSError:  # unreadable: the command reports it when it reads the input
            continue
    return files


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _check_text(path: PathLike, flag: str) -> Path:
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"{flag}: empty path")
    if "\0" in text:
        raise ConfigError(f"{flag} {text!r}: contains a NUL byte")
    return Path(text)


def check_output(path: PathLike, inputs: Iterable[PathLike] = (), *,
                 flag: str = "-o") -> Path:
    """Refuse a file output that is an input or exists as anything but a regular file.

    Args:
        path: The file the command will write.
        inputs: Every file the command reads (`input_files`).
        flag: How the user gave `path`, for the message.

    Returns:
        `path` as a `Path`.

    Raises:
        ConfigError: One line naming the flag, the path and the problem.
    """
    out = _check_text(path, flag)
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:  # a parent that is a file, a name too long, ...
        raise ConfigError(f"{flag} {out}: cannot be written ({e.strerror or e})") from e
    if mode is not None and not stat.S_ISREG(mode):
        raise ConfigError(f"{flag} {out}: exists and is {_kind(mode)}; refusing to replace it")
    _check_parent(out, flag)
    ident = _identity(out)
    if ident is not None:
        for source in inputs:
            if _identity(Path(source)) == ident:
                raise ConfigError(f"{flag} {out}: is the input {source}; refusing to "
                                  "overwrite an input (choose another output)")
    return out


def _check_parent(out: Path, flag: str) -> None:
    for parent in out.absolute().parents:
        try:
            mode = os.stat(parent).st_mode
        except FileNotFoundError:
            continue  # created when writing
        except OSError as e:
            raise ConfigError(f"{flag} {out}: cannot be written ({e.strerror or e})") from e
        if not stat.S_ISDIR(mode):
            raise ConfigError(f"{flag} {out}: {parent} is not a folder")
        return


def make_dir(folder: Path, flag: str = "-o") -> Path:
    """Create an output folder (and its parents); failures are one-line `ConfigError`s."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {folder}: cannot be created ({e.strerror or e})") from e
    return folder


def check_output_dir(folder: PathLike, names: Sequence[str],
                     inputs: Iterable[PathLike] = (), *, flag: str = "-o") -> Path:
    """Refuse an output folder that is a file, or whose files to be written are unsafe.

    Args:
        folder: The output folder (created when missing).
        names: The files the command writes into it.
        inputs: Every file the command reads.
        flag: How the user gave `folder`.

    Returns:
        `folder` as a `Path`.
    """
    out = _check_text(folder, flag)
    try:
        mode = os.stat(out).st_mode  # a symbolic link to a folder is a folder
    except FileNotFoundError:
        mode = None
        if os.path.islink(out):
            raise ConfigError(f"{flag} {out}: is a symbolic link to nothing; refusing to "
                              "write through it") from None
    except OSError as e:  # a parent that is a file, a name too long, ...
        raise ConfigError(f"{flag} {out}: cannot be written ({e.strerror or e})") from e
    if mode is not None and not stat.S_ISDIR(mode):
        raise ConfigError(f"{flag} {out}: exists and is not a folder")
    if mode is None:
        _check_parent(out, flag)
    inputs = list(inputs)
    for name in names:
        check_output(out / name, inputs, flag=flag)
    return out
