"""Bad command-line values: every numeric option with nan/inf/negative/zero/huge/garbage."""

from __future__ import annotations

NUM = ["nan", "inf", "-inf", "-1", "0", "1e308", "abc", "", "99999999999999999999999"]
RATE = ["nan", "inf", "-0.5", "1", "1.5", "abc", "1e-320"]
COUNT = ["0", "-1", "abc", "1e3", "99999999999999999999999", "4294967297"]
SHAPES = ["x:0x3x8x8", "x:1x3x8x8x8", "1x-3x8x8", "y:1x3x8x8", "x:99999999999999999999x3x8x8",
          "x:1x3x100000x100000", "x:1x3x2000x2000", "1x3x8", "x:", ":1x3x8x8", "x:1x3xHx8",
          "x:1x3x8x8,x:1x3x8x8", "x:\n1x3x8x8"]
PREPROCESS = {"--resize": ["0x0", "100000x100000", "axb", "8", "-8x8"],
              "--mean": ["nan", "1,2,3,4,5", "inf"], "--std": ["0", "-1", "nan", "inf"],
              "--layout": ["NWCH"], "--color": ["GBR"]}

PRUNE = (["prune", "m.onnx", "-o", "out.onnx", "--calib", "calib.npy"], ("out.onnx",),
         "check_onnx")
SPARSIFY = (["sparsify", "m.onnx", "-o", "out.onnx", "--calib", "calib.npy"], ("out.onnx",),
            "check_onnx")
QUANTIZE = (["quantize", "m.onnx", "-o", "q", "--calib", "calib.npy"], ("q",),
            "check_quant_dir")
COMPARE = (["compare", "ref.onnx", "m.onnx", "--calib", "calib.npy"], (), None)
BUILD = (["build", "q.onnx", "-o", "out.bin"], ("out.bin",), "check_bin")
VERIFY = (["verify", "q.onnx", "m.bin"], (), None)
RUN = (["run", "m.bin", "-o", "out.npz"], ("out.npz",), "check_npz")
PERF = (["perf", "m.bin"], (), None)
EVAL = (["eval", "m.onnx", "--data", "eval.npz"], (), None)
COMPILE = (["compile", "m.onnx", "-o", "out", "--quiet", "--calib", "calib.npy"], ("out",),
           "check_compile_dir")
INSPECT = (["inspect", "m.onnx"], (), None)
GROUPS = (["groups", "m.onnx"], (), None)
BARE = ([], ("out",), None)  # compile writes its partial report into out/

TABLE = [
    ("prune", PRUNE, {"--ratio": RATE, "--target-macs": ["0", "nan", "-1", "2", "1e-9"],
                      "--rates": ["[nan]", "[[[[", "{}", "[1e309]", "[0.1]*1e309",
                                  "[0.1]*10**12", "/dev/zero", "/etc/passwd"],
                      "--round-to": ["0", "-8", "99999999999999999999"],
                      "--max-rate": ["nan", "2", "-1"], "--ridge": ["inf", "nan", "-1"],
                      "--rows": COUNT, "--workers": ["0", "-1"],
                      "--calib-limit": ["0", "-1", "1000000000000000000"],
                      "--seed": ["-1", "18446744073709551617", "nan"],
                      "--criterion": ["bogus"], "--input-shape": SHAPES, **PREPROCESS}),
    ("prune-abc", (PRUNE[0] + ["--target-macs", "0.5", "--search", "abc"],) + PRUNE[1:],
     {"--holdout": ["nan", "0", "1", "-1", "0.999999"], "--abc-cycles": ["0", "-1"],
      "--abc-sources": ["0", "-1", "1"], "--abc-limit": ["0", "-1"],
      "--workers": ["0", "-1", "100000"]}),
    ("sparsify", SPARSIFY, {"--block": ["0", "3", "-4", "1000", "abc"],
                            "--sparsity": RATE, "--ridge": ["inf", "nan", "-1"],
                            "--rows": COUNT, "--exclude": ["[", "*", "\n"],
                            "--criterion": ["bogus"], "--input-shape": SHAPES[:6]}),
    ("quantize", QUANTIZE, {"--calibrator": ["bogus"], "--percentile": NUM,
                            "--batch-size": COUNT, "--calib-limit": COUNT,
                            "--keep-float": ["nonexistent", "*", ""],
                            "--rounding": ["bogus"], "--input-shape": SHAPES[:6],
                            "--calib": ["nonexistent.npy", "/dev/null", "/etc", "",
                                        "fmnist-nope"], **PREPROCESS}),
    ("compare", COMPARE, {"--limit": COUNT, "--batch": COUNT, "--top": ["-1", "1e12"],
                          "--input-shape": SHAPES[:4]}),
    ("build", BUILD, {"--arch": ["nonexistent", "/etc/passwd", "/dev/zero", "",
                                 "clock_mhz:.inf", "cores:0", "/etc"],
                      "--target": ["bogus", ""]}),
    ("verify", VERIFY, {"--samples": COUNT, "--seed": ["-1", "18446744073709551617"],
                        "--inputs": ["nonexistent", "/dev/null", "/etc"]}),
    ("run", RUN, {"--samples": COUNT, "--seed": ["-1", "18446744073709551617"],
                  "--inputs": ["nonexistent", "/dev/null"]}),
    ("perf", PERF, {"--cores": ["0", "3", "-1"], "--threads": ["0", "-1", "1000000000"],
                    "--frames": ["0", "-1", "1000000000000000000"], "--top": ["-1"],
                    "--arch": ["bogus", "/etc/passwd", "clock_mhz:.inf"]}),
    ("eval", EVAL, {"--limit": COUNT, "--batch": COUNT, "--input-shape": SHAPES[:4],
                    "--reference": ["nonexistent.onnx", "q.onnx", "calib.npy"]}),
    ("compile", COMPILE, {"--prune-ratio": RATE, "--target-macs": ["nan", "0"],
                          "--block": ["3", "0"], "--sparsity": ["2", "nan"],
                          "--seed": ["nan", "-1"], "--calibrator": ["bogus"],
                          "--arch": ["clock_mhz:.inf", "/etc/passwd"],
                          "--set": ["a", "prune.ratio=.nan", "model=", "seed=", "=",
                                    "input.shape=x:0x3x8x8"],
                          "--input-shape": SHAPES[:6], "--data": ["nonexistent", "/etc"]}),
    ("inspect", INSPECT, {"--input-shape": SHAPES}),
    ("groups", GROUPS, {"--members": ["-1", "0", "abc", "99999999999999999999"],
                        "--input-shape": SHAPES[:4]}),
    ("args", BARE, {None: ["", "bogus", "prune", "prune\0m.onnx", "quantize\0m.onnx",
                           "inspect", "inspect\0nonexistent.onnx", "inspect\0/dev/zero",
                           "inspect\0/etc", "inspect\0/dev/null", "inspect\0calib.npy",
                           "build\0m.onnx", "verify\0m.bin\0q.onnx", "perf\0q.onnx",
                           "run\0q.onnx", "compile\0nonexistent.onnx\0-o\0out",
                           "--bogus", "prune\0--bogus", "inspect\0m.onnx\0--json\0--json",
                           "eval\0m.onnx", "compare\0m.onnx", "--version",
                           "inspect\0-"]}),
]
