"""The foundation layer: IR, load/save, errors, numerics, typed feeds, the pass contract.

Everything here imports only from this package (and third-party libraries): never from
`passes`, `targets`, `models` or the driver (`compiler.driver`, `compiler.cli`). The
import-linter contracts in `pyproject.toml` enforce it.
"""

__version__ = "0.1.0"
