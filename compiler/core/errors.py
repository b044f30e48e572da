"""Project exceptions: every user-facing failure is one of these, carrying a one-line message."""

import re


class NpucError(Exception):
    """Base class for errors that the CLI reports as one line with exit code 2."""

    exit_code = 2


class ModelLoadError(NpucError):
    """The model file is missing, unreadable, not ONNX, or uses an unsupported opset."""


class GraphError(NpucError):
    """The graph is malformed (broken edges, cycles, shapes that cannot be inferred)."""


class PassError(NpucError):
    """A pass failed; the message names the pass and the passes that ran before it."""


class DataError(NpucError):
    """Input or calibration data is missing, of the wrong shape/dtype, or inconsistent."""


class ConfigError(NpucError):
    """An option or configuration key is invalid; the message names the key."""


class TargetError(NpucError):
    """The target backend cannot build, load or run a model or binary."""


class MismatchError(NpucError):
    """Verification found output mismatches (exit code 1, as a failed check rather than misuse)."""

    exit_code = 1


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_MESSAGE = 2000


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` as one printable line: line breaks joined, control characters escaped, capped.

    Messages quote names from untrusted files (node names, tensor names, onnxruntime's
    multi-line errors); a newline or an escape sequence in one must not forge extra lines or
    colour the terminal.
    """
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit - 1] + "…"
