import math

import pytest

from compiler.core.errors import ConfigError
from compiler.core.options import checked, options_of
from passes.prune.pipeline import PruneOptions
from passes.quantize.options import CalibrationOptions


def _field(cls, name):
    return next(d for d in options_of(cls) if d.name == name)


@pytest.mark.parametrize("cls,name,value", [
    (PruneOptions, "lam", math.inf), (PruneOptions, "lam", math.nan),
    (CalibrationOptions, "percentile", -math.inf),
])
def test_non_finite_numbers_are_refused_for_every_option(cls, name, value):
    with pytest.raises(ConfigError, match="must be a finite number"):
        checked(_field(cls, name), value, f"--{name}")


def test_finite_numbers_still_pass():
    assert checked(_field(PruneOptions, "lam"), 1e-3, "--ridge") == 1e-3
