"""The foundation layer: IR, load/save, errors, numerics, typed feeds, the pass contract.

Everything here imports only from this package (and third-party libraries): never from
`passes`, `targets`, `models` or the driver (`compiler.driver`, `compiler.cli`). The
import-linter contracts in `pyproject.toml` enforce it.
"""

import os

__version__ = "0.1.0"

# onnxruntime's telemetry (1.32) writes a device id and an event database under
# ~/.cache/Microsoft/DeveloperTools when the library is loaded, before any session exists;
# only this variable, set before the first `import onnxruntime`, stops it. Every package of
# the project imports this module first (their __init__ files), so it is set in time.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
