"""Size limits that keep a small hostile file from costing gigabytes or hours.

Each limit has a default sized for real CNNs with a wide margin and can be raised for one
run with an environment variable `NPUC_LIMIT_<NAME>` (an integer), e.g.
`NPUC_LIMIT_TENSOR_ELEMENTS=4294967296 npuc inspect big.onnx`. docs/security.md lists them.
"""

from __future__ import annotations

import os

from compiler.core.errors import ConfigError

DEFAULTS = {
    # one tensor of a model, after shape inference (1 Gi elements = 4 GiB of float32)
    "TENSOR_ELEMENTS": 1 << 30,
    # a constant folded at compile time (512 MiB of float32: VGG-sized FC weights fit)
    "FOLDED_ELEMENTS": 1 << 27,
    # iterations of a Loop with a constant trip count
    "LOOP_TRIPS": 1 << 20,
    # bytes of one .npy/.npz array read into memory (a third of a 24 GiB machine)
    "ARRAY_BYTES": 8 << 30,
    # inflate ratio of an .npz member above 64 MiB (real arrays deflate a few times at most)
    "ZIP_RATIO": 100,
    # pixels of one image file (64 MP: camera photos pass, decompression bombs do not)
    "IMAGE_PIXELS": 64_000_000,
    # bytes of a YAML or JSON file (configs, arch files, rate lists, calibration tables)
    "TEXT_BYTES": 1 << 20,
    # bytes of calibration.json (one entry per tensor: large models have thousands)
    "TABLE_BYTES": 64 << 20,
    # YAML nodes after expanding every alias ("billion laughs")
    "YAML_NODES": 100_000,
    # nesting depth of YAML / JSON documents
    "NESTING": 100,
    # samples drawn in one run (random inputs, verify, run)
    "SAMPLES": 100_000,
}


def limit(name: str) -> int:
    """The limit `name`: `NPUC_LIMIT_<NAME>` from the environment, else its default.

    Raises:
        ConfigError: The variable is set but is not a positive integer.
    """
    var = f"NPUC_LIMIT_{name}"
    text = os.environ.get(var)
    if text is None:
        return DEFAULTS[name]
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{var}={text!r}: must be a positive integer")
    return value
