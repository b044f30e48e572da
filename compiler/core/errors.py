"""Project exceptions: every user-facing failure is one of these, carrying a one-line message."""


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
