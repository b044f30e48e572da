"""`npuc demo`: the seed's table rows come from real compile runs."""

from __future__ import annotations

import pytest

from compiler.driver.demo import HEADERS, markdown, seed_table


@pytest.mark.slow
def test_seed_table_rows_are_measured_compiles():
    fast = {"eval.limit": 400, "calibration.limit": 64, "target.verify_samples": 2}
    methods = {"baseline": fast,
               "1xN": {**fast, "sparsify.enabled": True, "sparsify.criterion": "l1",
                       "sparsify.reconstruct": False, "sparsify.sparsity": 0.5}}
    rows = seed_table(("fmnist_resnet",), (), methods)
    base, sparse = rows
    assert base["MACs"] == sparse["MACs"] == 44_218_560  # 1xN keeps shapes
    assert base["params"] == 390_002
    assert base["verify"] == sparse["verify"] == "bit-exact"
    assert base["top-1 int8"] > 0.9
    assert sparse["latency ms (1c/1t)"] < base["latency ms (1c/1t)"]  # zero blocks skipped
    table = markdown(rows).splitlines()
    assert table[0] == "| " + " | ".join(HEADERS) + " |" and len(table) == 4
