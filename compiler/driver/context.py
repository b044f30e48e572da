"""The state `npuc compile` hands from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.core.ir import Model


@dataclass
class Context:
    """State handed from stage to stage.

    Attributes:
        config: Flat validated configuration.
        out_dir: Output folder.
        model: The current float model (after the stages run so far).
        original: The canonicalized input model (the float teacher / reference).
        files: Output files written so far, by role.
        report: The report being assembled (`report.json` content).
        results: Stage-specific objects later stages need (quant result, binary, ...).
    """

    config: dict[str, Any]
    out_dir: Path
    model: Model | None = None
    original: Model | None = None
    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
