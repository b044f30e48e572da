"""Hostile YAML / JSON for compile -c, --arch FILE, --rates, --calib-table and --set."""

from __future__ import annotations

import json

from tests.hostile.harness import Artefacts, Producer

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
DEEP_SEQ = "[" * 20000 + "]" * 20000
DEEP_MAP = "".join("  " * i + "a:\n" for i in range(300)) + "  " * 300 + "b: 1\n"
DEEP_FLOW_MAP = "{a: " * 5000 + "1" + "}" * 5000


def _cfg(**sections) -> str:
    return json.dumps(sections)  # JSON is YAML


COMPILE: dict[str, str | bytes] = {
    "billion_laughs": LAUGHS + "prune: {ratio: 0.5}\n",
    "billion_laughs_in_value": LAUGHS.replace("a: &a", "seed: &a"),
    "deep_sequence": "model: " + DEEP_SEQ,
    "deep_mapping": DEEP_MAP,
    "deep_flow_mapping": DEEP_FLOW_MAP,
    "recursive_alias": "a: &a [*a]\n",
    "merge_key_loop": "base: &b {ratio: 0.5}\nprune:\n  <<: *b\n  <<: *b\n",
    "non_utf8": b"prune:\n  ratio: \xff\xfe0.5\n",
    "utf16_bom": "prune: {ratio: 0.5}\n".encode("utf-16"),
    "nul_bytes": "prune: {ratio: 0.5}\n\0\0\0",
    "empty": "",
    "null": "null\n",
    "list_top": "- a\n- b\n",
    "scalar_top": "42\n",
    "python_tag": "prune: !!python/object/apply:os.system ['touch pwned']\n",
    "binary_tag": "model: !!binary aGVsbG8=\n",
    "set_tag": "model: !!set {a, b}\n",
    "timestamp": "model: 2001-12-14t21:59:43.10-05:00\n",
    "huge_file": "# " + "x" * (2 << 20) + "\n",
    "many_keys": "".join(f"k{i}: {i}\n" for i in range(20000)),
    "duplicate_keys": "seed: 1\nseed: 2\n",
    "unknown_key": "prune: {ratoi: 0.5}\n",
    "ratio_string": _cfg(prune={"enabled": True, "ratio": "abc"}),
    "ratio_list": _cfg(prune={"enabled": True, "ratio": [1, 2]}),
    "ratio_map": _cfg(prune={"enabled": True, "ratio": {"a": 1}}),
    "ratio_inf": "prune: {enabled: true, ratio: .inf}\n",
    "ratio_nan": "prune: {enabled: true, ratio: .nan}\n",
    "ratio_negative": "prune: {enabled: true, ratio: -1}\n",
    "ratio_one": "prune: {enabled: true, ratio: 1.0}\n",
    "ratio_1e309": "prune: {enabled: true, ratio: 1e309}\n",
    "ratio_bool": "prune: {enabled: true, ratio: true}\n",
    "seed_float": "seed: 1.5e30\n",
    "seed_negative": "seed: -1\n",
    "seed_bigint": f"seed: {2 ** 70}\n",
    "calib_limit_zero": "calibration: {limit: 0}\n",
    "calib_limit_huge": "calibration: {limit: 1000000000000}\n",
    "calib_percentile_nan": "calibration: {calibrator: percentile, percentile: .nan}\n",
    "calib_batch_zero": "calibration: {batch_size: 0}\n",
    "calib_data_dev_zero": "calibration: {data: /dev/zero}\n",
    "calib_data_dev_urandom_npy": "calibration: {data: /dev/urandom}\n",
    "calib_data_etc": "calibration: {data: /etc}\n",
    "calib_table_passwd": "calibration: {table: /etc/passwd}\n",
    "block_three": "sparsify: {enabled: true, block: 3}\n",
    "sparsity_two": "sparsify: {enabled: true, sparsity: 2.0}\n",
    "sparsify_rows_zero": "sparsify: {enabled: true, rows: 0}\n",
    "sparsify_exclude_map": "sparsify: {enabled: true, exclude: {a: 1}}\n",
    "frames_zero": "target: {frames: 0}\n",
    "frames_huge": "target: {frames: 1000000000000000000}\n",
    "threads_zero": "target: {threads: 0}\n",
    "threads_huge": "target: {threads: 1000000000}\n",
    "cores_three": "target: {cores: 3}\n",
    "verify_samples_huge": "target: {verify_samples: 1000000000}\n",
    "verify_samples_zero": "target: {verify_samples: 0}\n",
    "verify_data_passwd": "target: {verify_data: /etc/passwd}\n",
    "arch_passwd": "target: {arch: /etc/passwd}\n",
    "arch_dev_zero": "target: {arch: /dev/zero}\n",
    "arch_inline_map": "target: {arch: {clock_mhz: .inf}}\n",
    "target_unknown": "target: {name: gpu}\n",
    "top_layers_negative": "report: {top_layers: -1}\n",
    "eval_batch_zero": "eval: {data: eval.npz, batch_size: 0}\n",
    "eval_limit_negative": "eval: {limit: -5}\n",
    "input_mean_nan": "input: {mean: [.nan]}\n",
    "input_std_zero": "input: {std: [0]}\n",
    "input_resize_zero": "input: {resize: [0, 0]}\n",
    "input_shape_huge": "input: {shape: 'x:1x3x100000x100000'}\n",
    "input_shape_zero": "input: {shape: 'x:0x3x8x8'}\n",
    "input_shape_garbage": "input: {shape: {x: 'abc'}}\n",
    "model_passwd": "model: /etc/passwd\n",
    "model_dev_zero": "model: /dev/zero\n",
    "model_number": "model: 123\n",
    "model_list": "model: [a, b]\n",
    "model_traversal": "model: ../../../../../../etc/hostname\n",
    "prune_workers_huge": "prune: {enabled: true, ratio: 0.5, workers: 100000}\n",
    "prune_workers_negative": "prune: {enabled: true, ratio: 0.5, workers: -1}\n",
    "prune_rows_zero": "prune: {enabled: true, ratio: 0.5, rows: 0}\n",
    "prune_rows_huge": "prune: {enabled: true, ratio: 0.5, rows: 100000000000}\n",
    "prune_ridge_inf": "prune: {enabled: true, ratio: 0.5, ridge: .inf}\n",
    "prune_round_to_zero": "prune: {enabled: true, ratio: 0.5, round_to: 0}\n",
    "prune_abc_cycles_huge": "prune: {enabled: true, target_macs: 0.5, search: abc, "
                             "abc_cycles: 1000000000}\n",
    "prune_abc_sources_huge": "prune: {enabled: true, target_macs: 0.5, search: abc, "
                              "abc_food_sources: 1000000000}\n",
    "prune_holdout_one": "prune: {enabled: true, target_macs: 0.5, search: abc, holdout: 1.0}\n",
    "prune_rates_bomb": "prune: {enabled: true, rates: '[0.1]*1000000000000'}\n",
    "prune_rates_inf_repeat": "prune: {enabled: true, rates: '[0.1]*1e309'}\n",
    "prune_target_macs_zero": "prune: {enabled: true, target_macs: 0}\n",
    "quantize_keep_float_all": "quantize: {keep_float: ['*']}\n",
    "quantize_rounding_gptq": "quantize: {rounding: gptq}\n",
    "everything_off": "quantize: {enabled: false}\n",
}

ARCH: dict[str, str | bytes] = {
    "billion_laughs": LAUGHS,
    "deep": "name: " + DEEP_SEQ,
    "non_utf8": b"name: \xff\n",
    "empty": "",
    "list": "- 1\n",
    "clock_inf": "base: default\nclock_mhz: .inf\n",
    "clock_nan": "clock_mhz: .nan\n",
    "clock_zero": "clock_mhz: 0\n",
    "clock_negative": "clock_mhz: -1000\n",
    "clock_string": "clock_mhz: fast\n",
    "clock_huge": "clock_mhz: 1e308\n",
    "cores_zero": "cores: 0\n",
    "cores_huge": "cores: 1000000000\n",
    "mac_array_zero": "mac_array: {pixels: 0, in_channels: 16, out_channels: 16}\n",
    "mac_array_list": "mac_array: [1, 2]\n",
    "sram_negative": "sram_bytes: -1\n",
    "sram_huge": "sram_bytes: 1e30\n",
    "ddr_zero": "ddr_bandwidth_gbps: 0\n",
    "sparse_eff_above_one": "sparse_efficiency: {4: 2.0}\n",
    "sparse_eff_negative_key": "sparse_efficiency: {-1: 0.5}\n",
    "sparse_eff_nan": "sparse_efficiency: {4: .nan}\n",
    "host_cores_zero": "host: {cores: 0}\n",
    "host_gflops_zero": "host: {gflops_per_core: 0}\n",
    "overhead_negative": "instruction_overhead_cycles: -200\n",
    "unknown_key": "frobnicate: 1\n",
    "python_tag": "name: !!python/name:os.system\n",
    "huge_file": "# " + "y" * (2 << 20) + "\n",
}

RATES: dict[str, str | bytes] = {
    "billion_laughs": LAUGHS,
    "deep": DEEP_SEQ,
    "nan": "[.nan, .nan]\n",
    "inf": "[.inf]\n",
    "above_one": "[2.0, 2.0]\n",
    "one": "[1.0, 1.0, 1.0]\n",
    "negative": "[-0.5, -0.5]\n",
    "strings": "[a, b]\n",
    "nested_lists": "[[0.5], [0.5]]\n",
    "map_unknown_group": "{999: 0.5}\n",
    "map_member_one": "{stem: 1.0}\n",
    "map_nan_key": "{.nan: 0.5}\n",
    "million_entries": "[" + ", ".join(["0.1"] * 200000) + "]\n",
    "empty_list": "[]\n",
    "non_utf8": b"[0.1, \xff]\n",
    "scalar": "0.5\n",
}

RATE_EXPRESSIONS = {
    "repeat_huge": "[0.1]*1000000000000",
    "repeat_inf": "[0.1]*1e309",
    "repeat_nan": "[0.1]*nan",
    "repeat_negative": "[0.1]*-5",
    "nested_repeat": "([0.1]*1000)*1000000",
    "deep_parens": "(" * 5000 + "[0.1]" + ")" * 5000,
    "long_sum": "+".join(["[0.1]"] * 20000),
    "call": "__import__('os').system('touch pwned')",
    "lambda": "(lambda: [0.1])()",
    "attribute": "[0.1].__class__",
    "power": "[0.1]*10**100",
    "float_repeat": "[0.1]*2.5",
    "string_repeat": "'a'*1000000000",
    "empty": "",
    "huge_number": "[1" + "0" * 5000 + "]",
}


def _table(edit) -> Producer:
    def produce(art: Artefacts) -> bytes:
        table = json.loads(art.read("quant/conv/calibration.json"))
        out = edit(table)
        return out if isinstance(out, bytes) else json.dumps(out if out is not None else table,
                                                             allow_nan=True).encode()
    return produce


def _set_all(key: str, value):
    def edit(table: dict) -> None:
        for entry in table["tensors"].values():
            entry[key] = value
    return edit


TABLES: dict[str, Producer] = {
    "valid": _table(lambda t: None),
    "not_json": _table(lambda t: b"{not json"),
    "deep_json": _table(lambda t: ("[" * 100000 + "]" * 100000).encode()),
    "non_utf8": _table(lambda t: b'{"version": 1, "x": "\xff"}'),
    "list": _table(lambda t: [1, 2]),
    "threshold_nan": _table(_set_all("threshold", float("nan"))),
    "threshold_inf": _table(_set_all("threshold", float("inf"))),
    "threshold_zero": _table(_set_all("threshold", 0.0)),
    "threshold_negative": _table(_set_all("threshold", -1.0)),
    "threshold_huge": _table(_set_all("threshold", 1e308)),
    "threshold_tiny": _table(_set_all("threshold", 1e-320)),
    "threshold_string": _table(_set_all("threshold", "big")),
    "scale_mismatch": _table(_set_all("scale", 123.0)),
    "dtype_int4": _table(_set_all("dtype", "int4")),
    "dtype_list": _table(_set_all("dtype", ["uint8"])),
    "levels_wrong": _table(_set_all("levels", 7)),
    "no_tensors": _table(lambda t: {**t, "tensors": {}}),
    "tensors_list": _table(lambda t: {**t, "tensors": [1]}),
    "wrong_hash": _table(lambda t: {**t, "model_hash": "0" * 64}),
    "version_99": _table(lambda t: {**t, "version": 99}),
    "extra_tensor": _table(lambda t: {**t, "tensors": {**t["tensors"], "nope": {
        "threshold": 1.0, "scale": 1 / 127}}}),
    "huge_file": _table(lambda t: b" " * (40 << 20) + b"{}"),
}

SETS: dict[str, list[str]] = {
    "nan_ratio": ["prune.ratio=.nan", "prune.enabled=true"],
    "inf_ridge": ["prune.ridge=.inf", "prune.enabled=true", "prune.ratio=0.5"],
    "inf_sparse_ridge": ["sparsify.ridge=.inf", "sparsify.enabled=true"],
    "deep_value": ["model=" + "[" * 5000 + "]" * 5000],
    "laughs_value": ["model=" + LAUGHS.replace("\n", " ")],
    "no_equals": ["prune.ratio"],
    "empty_key": ["=1"],
    "unknown_key": ["nope.key=1"],
    "python_tag": ["seed=!!python/object/apply:os.system ['touch pwned']"],
    "huge_value": ["model=" + "x" * (2 << 20)],
    "section_as_value": ["prune=1"],
    "seed_string": ["seed=abc"],
}
