"""npusim architecture presets and files: validation with one-line errors."""

from __future__ import annotations

import pytest
import yaml

from compiler.cli import main
from compiler.core.errors import ConfigError
from targets.npusim.arch import PRESET_DIR, load_arch, presets


def test_presets_load_and_default_is_dual_core():
    assert {"default", "single-core"} <= set(presets())
    arch = load_arch("default")
    assert arch.cores == 2
    assert arch.macs_per_cycle == 1024
    assert arch.sparse_efficiency[4] == pytest.approx(0.7)
    assert arch.ddr_bytes_per_cycle == pytest.approx(12.8)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown architecture preset 'nope'.*default"):
        load_arch("nope")


def _write(tmp_path, edit):
    data = yaml.safe_load((PRESET_DIR / "default.yaml").read_text())
    edit(data)
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("clock_mhz"), "missing field clock_mhz"),
    (lambda d: d.update(sram_bytes=-5), "field sram_bytes must be > 0"),
    (lambda d: d.update(cores="two"), "field cores must be an integer"),
    (lambda d: d["host"].pop("gflops_per_core"), "missing field host.gflops_per_core"),
    (lambda d: d["mac_array"].update(pixels=0), "field mac_array.pixels must be > 0"),
    (lambda d: d["sparse_efficiency"].pop(8), "missing field sparse_efficiency.8"),
    (lambda d: d["sparse_efficiency"].update({4: 1.5}), "sparse_efficiency.4 must be <= 1"),
    (lambda d: d.update(instruction_overhead_cycles=-1),
     "instruction_overhead_cycles must be >= 0"),
    (lambda d: d.update(clock_mhz=float("inf")), "clock_mhz must be a finite number"),
    (lambda d: d["host"].update(partition_overhead_us=float("nan")),
     "partition_overhead_us must be a finite number"),
])
def test_bad_arch_files_name_the_field(tmp_path, edit, field):
    with pytest.raises(ConfigError, match=field):
        load_arch(_write(tmp_path, edit))


def test_custom_file_round_trips(tmp_path):
    path = _write(tmp_path, lambda d: d.update(name="fast", clock_mhz=2000))
    arch = load_arch(path)
    assert (arch.name, arch.clock_mhz) == ("fast", 2000.0)


def test_cli_bad_arch_exit_2(tmp_path, capsys):
    bad = _write(tmp_path, lambda d: d.pop("cores"))
    model = tmp_path / "x.bin"
    model.write_bytes(b"NPUB")
    assert main(["perf", str(model), "--arch", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err
    assert main(["perf", str(model), "--arch", str(bad)]) == 2
