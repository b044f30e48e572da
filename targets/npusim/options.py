"""Options of the npusim target's build, verify and perf steps (config keys `target.*`).

Declared once here; the config schema, the flags of `npuc build` / `npuc verify` /
`npuc perf` and docs/config.md are generated from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.core.options import non_negative, option, positive

TARGETS = ("npusim",)


@dataclass
class BuildOptions:
    """How `build_binary` lowers a quantized model."""

    target: str = option("npusim", "target backend", key="name", choices=TARGETS)
    arch: str = option("default", "architecture preset name or YAML file", metavar="PRESET|FILE")


@dataclass
class VerifyOptions:
    """Which inputs the bit-exact check runs on."""

    data: str | None = option(
        None, "inputs for verify: .npy/.npz, image folder or dataset name (null: the "
        "calibration data when the run has any, else seeded random inputs)", types=(str,),
        key="verify_data", flag="--inputs", metavar="DATA")
    samples: int = option(8, "number of inputs checked", key="verify_samples", check=positive)
    seed: int = option(0, "seed of the random inputs", shared="seed", check=non_negative)


_PERF_NO_KEY = ("npuc compile reports latency on 1 core and 1 thread and FPS on "
                "target.cores x target.threads")


@dataclass
class PerfOptions:
    """What `estimate_perf` models: `npuc perf`'s flags (compile's figures: `target.*`)."""

    arch: str | None = option(None, "architecture preset or YAML file (null: the build's)",
                              types=(str,), metavar="PRESET|FILE",
                              no_key="compile's perf uses the arch of its build, target.arch")
    cores: int = option(1, "NPU cores used", check=positive, no_key=_PERF_NO_KEY)
    threads: int = option(1, "host threads submitting frames", check=positive,
                          no_key=_PERF_NO_KEY)
    frames: int = option(1000, "frames averaged (the first also loads SRAM-resident weights)",
                         check=positive)


__all__ = ["TARGETS", "BuildOptions", "PerfOptions", "VerifyOptions"]
