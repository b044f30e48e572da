"""The hostile cases, generated deterministically at import (ids are stable test ids).

Families (`Case.kind`): model-semantic, quant-semantic, binary, config, calib, cli, output,
signal. The byte-level model and binary mutants are drawn by hypothesis in
`test_hostile.py` (kinds model-bytes and binary-bytes) and built with `bytes_case` here.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import onnx

from tests.hostile import datafiles as df
from tests.hostile import mutations as mut
from tests.hostile.harness import Artefacts, Case, Producer

FAST_SHARE = 15  # about one case in FAST_SHARE is in the fast subset


def is_fast(case_id: str) -> bool:
    """A stable pseudo-random share of the cases."""
    return int(hashlib.sha1(case_id.encode()).hexdigest()[:8], 16) % FAST_SHARE == 0


def copy(rel: str) -> Producer:
    """The bytes of a session artefact."""
    return lambda art: art.read(rel)


def const(data: bytes | str) -> Producer:
    """Fixed bytes."""
    raw = data.encode() if isinstance(data, str) else data
    return lambda art: raw


def _mutated(rel: str, fn: Callable[[onnx.ModelProto], None]) -> Producer:
    def produce(art: Artefacts) -> bytes:
        model = onnx.load_from_string(art.read(rel))
        fn(model)
        return model.SerializeToString()
    return produce


def _case(case_id: str, kind: str, argv: list[str], files: dict[str, Producer], *,
          outputs: tuple[str, ...] = (), check: str | None = None, fast: bool | None = None,
          **kw) -> Case:
    return Case(case_id, kind, tuple(argv), tuple(files.items()), outputs=outputs,
                check=check, fast=is_fast(case_id) if fast is None else fast, **kw)


# -- command templates -----------------------------------------------------------------------
# name -> (argv, outputs, check); M is the model under test, REF the same model unmutated.

FLOAT_CMDS: dict[str, tuple[list[str], tuple[str, ...], str | None]] = {
    "inspect": (["inspect", "m.onnx"], (), None),
    "groups": (["groups", "m.onnx"], (), None),
    "prune": (["prune", "m.onnx", "-o", "out.onnx", "--ratio", "0.5", "--calib", "calib.npy"],
              ("out.onnx",), "check_onnx"),
    "sparsify": (["sparsify", "m.onnx", "-o", "out.onnx", "--block", "2", "--calib",
                  "calib.npy", "--include-first-last"], ("out.onnx",), "check_onnx"),
    "quantize": (["quantize", "m.onnx", "-o", "q", "--calib", "calib.npy"], ("q",),
                 "check_quant_dir"),
    "compare": (["compare", "ref.onnx", "m.onnx", "--calib", "calib.npy"], (), None),
    "eval": (["eval", "m.onnx", "--data", "eval.npz", "--reference", "ref.onnx"], (), None),
    "compile": (["compile", "m.onnx", "-o", "out", "--calib", "calib.npy", "--quiet",
                 "--prune-ratio", "0.25", "--sparsity", "0.5", "--block", "2"], ("out",),
                "check_compile_dir"),
    "sensitivity": (["sensitivity", "m.onnx", "--calib", "calib.npy", "-o", "s.json"],
                    ("s.json",), None),
}
QUANT_CMDS = {
    "build": (["build", "q.onnx", "-o", "out.bin"], ("out.bin",), "check_bin"),
    "verify": (["verify", "q.onnx", "m.bin"], (), None),
    "compare": (["compare", "ref.onnx", "q.onnx", "--calib", "calib.npy"], (), None),
}
BIN_CMDS = {
    "inspect": (["inspect", "m.bin"], (), None),
    "verify": (["verify", "q.onnx", "m.bin"], (), None),
    "run": (["run", "m.bin", "-o", "out.npz"], ("out.npz",), "check_npz"),
    "perf": (["perf", "m.bin"], (), None),
}
ROUND_ROBIN = ("groups", "prune", "sparsify", "compare", "eval", "compile")


def float_files(model: Producer, base: str) -> dict[str, Producer]:
    """The files every float-model command may read."""
    return {"m.onnx": model, "ref.onnx": copy(f"models/{base}.onnx"),
            "calib.npy": copy("calib.npy"), "eval.npz": copy("eval.npz")}


def quant_files(qmodel: Producer, base: str = "conv") -> dict[str, Producer]:
    """The files the quantized-model commands read."""
    return {"q.onnx": qmodel, "m.bin": copy(f"bin/{base}.bin"),
            "ref.onnx": copy(f"models/{base}.onnx"), "calib.npy": copy("calib.npy")}


def bin_files(binary: Producer, base: str = "conv") -> dict[str, Producer]:
    """The files the binary commands read."""
    return {"m.bin": binary, "q.onnx": copy(f"quant/{base}/model.quant.onnx")}


def bytes_case(family: str, cmd: str, label: str, data: bytes, base: str) -> Case:
    """A byte-level mutant of a model (family model/quant) or binary for `cmd`."""
    if family == "model":
        argv, outputs, check = FLOAT_CMDS[cmd]
        files = float_files(const(data), base)
    elif family == "quant":
        argv, outputs, check = QUANT_CMDS[cmd]
        files = quant_files(const(data), base)
    else:
        argv, outputs, check = BIN_CMDS[cmd]
        files = bin_files(const(data), base)
    kind = "binary-bytes" if family == "binary" else "model-bytes"
    return _case(f"{kind}/{family}-{cmd}/{label}", kind, argv, files, outputs=outputs,
                 check=check, fast=False)


# -- semantic model mutations ----------------------------------------------------------------

# Pairs the rotation misses that once failed (found by running every mutation on every
# command): a prune through an empty conv, eval of a model without inputs, a prune that
# changed a tensor an If body reads.
EXTRA_FLOAT_CMDS = {"zero_channel_weight": ("prune", "compile"), "constant_graph": ("eval",),
                    "if_subgraph": ("prune",)}


def _float_commands(i: int, name: str) -> list[str]:
    cmds = ["inspect", "quantize", ROUND_ROBIN[i % 6], ROUND_ROBIN[(i + 3) % 6]]
    cmds += [c for c in EXTRA_FLOAT_CMDS.get(name, ()) if c not in cmds]
    if i % 4 == 0:  # every mutation passed sensitivity (both modes) once; a quarter keep it
        cmds.append("sensitivity")
    if name.startswith(("external", "constantofshape", "expand", "tile", "resize_bomb",
                        "range", "huge", "loop")):
        cmds = ["inspect", "groups", "prune", "sparsify", "quantize", "compare", "eval",
                "compile"]
    return cmds


def model_semantic_cases() -> list[Case]:
    """Every float mutation on inspect, quantize and two more commands (bombs: all)."""
    cases = []
    for i, (name, (base, fn)) in enumerate(mut.FLOAT.items()):
        setup = mut.SETUP.get(name)
        for cmd in _float_commands(i, name):
            argv, outputs, check = FLOAT_CMDS[cmd]
            files = float_files(_mutated(f"models/{base}.onnx", fn), base)
            cases.append(_case(f"model-semantic/{name}/{cmd}", "model-semantic", argv, files,
                               outputs=outputs, check=check,
                               setup=(lambda d, a, s=setup: s(d)) if setup else None))
    return cases


def quant_semantic_cases() -> list[Case]:
    """Every quantized-model mutation on build, verify and compare."""
    cases = []
    for name, fn in mut.QUANT.items():
        for cmd, (argv, outputs, check) in QUANT_CMDS.items():
            files = quant_files(_mutated("quant/conv/model.quant.onnx", fn))
            cases.append(_case(f"quant-semantic/{name}/{cmd}", "quant-semantic", argv, files,
                               outputs=outputs, check=check))
    return cases


# -- binaries --------------------------------------------------------------------------------

def binary_cases() -> list[Case]:
    """Structured binary mutations (header, section table, program) on every binary command."""
    from tests.hostile import binaries

    cases = []
    for name, (base, produce) in binaries.MUTATIONS.items():
        for cmd, (argv, outputs, check) in BIN_CMDS.items():
            must_fail = name.startswith("partition_")
            files = bin_files(produce, base)
            if must_fail:  # what a relative external-data path would pick up
                files["weights.bin"] = const(bytes(64))
            cases.append(_case(f"binary/{name}/{cmd}", "binary", argv, files,
                               outputs=outputs, check=check,
                               expect="error" if must_fail and cmd in ("verify", "run")
                               else "any",
                               fast=True if must_fail and cmd == "run" else None))
    return cases


# -- configs ---------------------------------------------------------------------------------

def config_cases() -> list[Case]:
    """Hostile YAML for compile -c, --arch FILE, --rates FILE, --calib-table, --set."""
    from tests.hostile import configs

    cases = []
    common = {"m.onnx": copy("models/conv.onnx"), "calib.npy": copy("calib.npy")}
    for name, text in configs.COMPILE.items():
        # the calibration data comes from the flag unless the config itself names some
        calib = [] if b"calibration: {data" in (text if isinstance(text, bytes) else
                                                 text.encode()) else ["--calib", "calib.npy"]
        cases.append(_case(f"config/compile-c/{name}", "config",
                           ["compile", "m.onnx", "-c", "cfg.yaml", "-o", "out", "--quiet",
                            *calib],
                           {**common, "cfg.yaml": const(text)}, outputs=("out",),
                           check="check_compile_dir"))
    for name, text in configs.ARCH.items():
        for cmd, argv, outputs, check in (
                ("build", ["build", "q.onnx", "--arch", "arch.yaml", "-o", "out.bin"],
                 ("out.bin",), "check_bin"),
                ("perf", ["perf", "m.bin", "--arch", "arch.yaml"], (), None)):
            files = {"q.onnx": copy("quant/conv/model.quant.onnx"),
                     "m.bin": copy("bin/conv.bin"), "arch.yaml": const(text)}
            cases.append(_case(f"config/arch/{name}/{cmd}", "config", argv, files,
                               outputs=outputs, check=check))
    for name, text in configs.RATES.items():
        cases.append(_case(f"config/rates-file/{name}", "config",
                           ["prune", "m.onnx", "-o", "out.onnx", "--rates", "rates.yaml",
                            "--no-reconstruct"],
                           {"m.onnx": copy("models/res.onnx"), "rates.yaml": const(text)},
                           outputs=("out.onnx",), check="check_onnx"))
    for name, text in configs.RATE_EXPRESSIONS.items():
        cases.append(_case(f"config/rates-expr/{name}", "config",
                           ["prune", "m.onnx", "-o", "out.onnx", "--rates", text,
                            "--no-reconstruct"], {"m.onnx": copy("models/res.onnx")},
                           outputs=("out.onnx",), check="check_onnx"))
    for name, produce in configs.TABLES.items():
        cases.append(_case(f"config/calib-table/{name}", "config",
                           ["quantize", "m.onnx", "-o", "q", "--calib-table", "table.json"],
                           {"m.onnx": copy("models/conv.onnx"), "table.json": produce},
                           outputs=("q",), check="check_quant_dir"))
    for name, sets in configs.SETS.items():
        argv = ["compile", "m.onnx", "-o", "out", "--quiet", "--calib", "calib.npy"]
        for s in sets:
            argv += ["--set", s]
        cases.append(_case(f"config/set/{name}", "config", argv, common, outputs=("out",),
                           check="check_compile_dir"))
    return cases


# -- calibration data ------------------------------------------------------------------------

CALIB_CMDS = {
    "quantize": (["quantize", "m.onnx", "-o", "q", "--calib", "{data}"], ("q",),
                 "check_quant_dir"),
    "prune": (["prune", "m.onnx", "-o", "out.onnx", "--ratio", "0.5", "--calib", "{data}"],
              ("out.onnx",), "check_onnx"),
    "sparsify": (["sparsify", "m.onnx", "-o", "out.onnx", "--block", "2", "--calib",
                  "{data}", "--include-first-last"], ("out.onnx",), "check_onnx"),
    "compare": (["compare", "m.onnx", "q.onnx", "--calib", "{data}"], (), None),
    "compile": (["compile", "m.onnx", "-o", "out", "--quiet", "--calib", "{data}"], ("out",),
                "check_compile_dir"),
    "run": (["run", "m.bin", "--inputs", "{data}", "-o", "out.npz"], ("out.npz",),
            "check_npz"),
    "verify": (["verify", "q.onnx", "m.bin", "--inputs", "{data}"], (), None),
    "eval": (["eval", "m.onnx", "--data", "{data}"], (), None),
}
CALIB_ROTATION = ("prune", "sparsify", "compare", "compile", "run", "verify")


def _calib_cmds(i: int, name: str) -> list[str]:
    if name.startswith(("bomb", "lie", "zip", "fifo", "dev")):
        return list(CALIB_CMDS)
    return ["quantize", CALIB_ROTATION[i % 6], CALIB_ROTATION[(i + 2) % 6]]


def calib_cases() -> list[Case]:
    """Hostile .npy/.npz files and image folders on every command that reads data."""
    cases = []
    for i, (name, (rel, produce, setup, warn)) in enumerate(df.DATA.items()):
        cmds = ["eval"] if name.startswith("eval_") else _calib_cmds(i, name)
        for cmd in cmds:
            argv, outputs, check = CALIB_CMDS[cmd]
            argv = [a.replace("{data}", rel) for a in argv]
            files = {"m.onnx": copy("models/conv.onnx"),
                     "q.onnx": copy("quant/conv/model.quant.onnx"),
                     "m.bin": copy("bin/conv.bin")}
            if produce is not None:
                files[rel] = produce
            cases.append(_case(f"calib/{name}/{cmd}", "calib", argv, files, outputs=outputs,
                               check=check, setup=setup,
                               expect="warn" if warn and cmd == "quantize" else "any"))
    return cases


# -- bad CLI values --------------------------------------------------------------------------

def cli_cases() -> list[Case]:
    """Bad option values and arguments for every command."""
    from tests.hostile import cli_values

    cases = []
    for cmd, base_argv, flags in cli_values.TABLE:
        argv0, outputs, check = base_argv
        files = {"m.onnx": copy("models/res.onnx"), "calib.npy": copy("calib.npy"),
                 "q.onnx": copy("quant/conv/model.quant.onnx"), "m.bin": copy("bin/conv.bin"),
                 "eval.npz": copy("eval.npz"), "ref.onnx": copy("models/res.onnx")}
        for flag, values in flags.items():
            for value in values:
                argv = argv0 + ([flag, value] if flag else value.split("\x00"))
                label = f"{flag or 'args'}={value!r}"[:80]
                cases.append(_case(f"cli/{cmd}/{label}", "cli", argv, files, outputs=outputs,
                                   check=check))
    return cases


# -- output-path traps -----------------------------------------------------------------------

OUT_CMDS = {
    # name: (argv with {out}, inputs the command reads, file or folder output)
    "prune": (["prune", "m.onnx", "-o", "{out}", "--ratio", "0.5", "--calib", "calib.npy"],
              "file"),
    "sparsify": (["sparsify", "m.onnx", "-o", "{out}", "--block", "2", "--calib",
                  "calib.npy", "--include-first-last"], "file"),
    "quantize": (["quantize", "m.onnx", "-o", "{out}", "--calib", "calib.npy"], "dir"),
    "build": (["build", "q.onnx", "-o", "{out}", "--arch", "arch.yaml"], "file"),
    "run": (["run", "m.bin", "--inputs", "calib.npy", "-o", "{out}"], "file"),
    "compile": (["compile", "m.onnx", "-o", "{out}", "--quiet", "--calib", "calib.npy"],
                "dir"),
}
CHECKS = {"prune": "check_onnx", "sparsify": "check_onnx", "quantize": "check_quant_dir",
          "build": "check_bin", "run": "check_npz", "compile": "check_compile_dir"}
INPUTS = {"m.onnx": copy("models/conv.onnx"), "calib.npy": copy("calib.npy"),
          "q.onnx": copy("quant/conv/model.quant.onnx"), "m.bin": copy("bin/conv.bin"),
          "arch.yaml": copy("arch.yaml")}
CMD_INPUTS = {"prune": ("m.onnx", "calib.npy"), "sparsify": ("m.onnx", "calib.npy"),
              "quantize": ("m.onnx", "calib.npy"), "build": ("q.onnx", "arch.yaml"),
              "run": ("m.bin", "calib.npy"), "compile": ("m.onnx", "calib.npy")}


def _mkfifo(rel: str):
    return lambda d, a: os.mkfifo(d / rel)


def _mknod(rel: str):
    def setup(d: Path, a: Artefacts) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mknod(d / rel, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    return setup


def _symlink(target: str, rel: str):
    def setup(d: Path, a: Artefacts) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, d / rel)
    return setup


def _hardlink(src: str, rel: str):
    return lambda d, a: os.link(d / src, d / rel)


def _readonly(rel: str):
    def setup(d: Path, a: Artefacts) -> None:
        folder = d / rel
        folder.mkdir()
        if os.geteuid() == 0:  # root ignores permissions; an immutable folder refuses root too
            subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
        else:
            folder.chmod(0o555)
    return setup


def _mkdir(rel: str):
    return lambda d, a: (d / rel).mkdir(parents=True)


def _traps(cmd: str, shape: str) -> list[tuple[str, str, object, str]]:
    """(name, -o value, setup, expectation) for one command."""
    model = CMD_INPUTS[cmd][0]
    dir_out = shape == "dir"
    traps: list[tuple[str, str, object, str]] = [
        ("equals-input", model, None, "error"),
        ("equals-input-dotted", f"./sub/../{model}", _mkdir("sub"), "error"),
        ("equals-second-input", CMD_INPUTS[cmd][1], None, "error"),
        ("hardlink-to-input", "link.out", _hardlink(model, "link.out"), "error"),
        ("symlink-to-input", "sym.out", _symlink(model, "sym.out"), "error"),
        ("fifo", "fifo.out", _mkfifo("fifo.out"), "error"),
        ("char-device", "null.out", _mknod("null.out"), "error"),
        ("symlink-outside", "sym.out", _symlink("/etc/hostname", "sym.out"), "error"),
        ("dangling-symlink", "sym.out", _symlink("nowhere/x", "sym.out"), "error"),
        ("readonly-folder", "ro/out.x", _readonly("ro"), "error"),
        ("missing-parent", "new/deeper/out.x", None, "ok"),
        ("parent-is-file", f"{model}/out.x", None, "error"),
        ("name-too-long", "n" * 300, None, "error"),
        ("empty", "", None, "error"),
    ]
    if dir_out:
        traps += [
            ("existing-file", "out.file", lambda d, a: (d / "out.file").write_bytes(b"x"),
             "error"),
            ("fifo-inside", "out", _mkfifo_inside(cmd), "error"),
            ("device-inside", "out", _mknod(f"out/{_first_output(cmd)}"), "error"),
            ("symlink-inside", "out", _symlink_inside(cmd), "error"),
            ("input-inside", "out", None, "error"),
            ("existing-dir", "out", _mkdir("out"), "ok"),
        ]
    else:
        traps += [("existing-dir", "out.x", _mkdir("out.x"), "error"),
                  ("previous-output", "out.x", lambda d, a: (d / "out.x").write_bytes(b"old"),
                   "ok")]
    return traps


def _first_output(cmd: str) -> str:
    return "model.quant.onnx"


def _mkfifo_inside(cmd: str):
    def setup(d: Path, a: Artefacts) -> None:
        (d / "out").mkdir()
        os.mkfifo(d / "out" / _first_output(cmd))
    return setup


def _symlink_inside(cmd: str):
    def setup(d: Path, a: Artefacts) -> None:
        (d / "out").mkdir()
        os.symlink("/etc/hostname", d / "out" / _first_output(cmd))
    return setup


def _external_weights_cases() -> list[Case]:
    """-o naming the external data file of the input model (its weights)."""
    base, fn = mut.FLOAT["external_ok"]
    cases = []
    for cmd in ("prune", "sparsify"):
        argv = [a.replace("{out}", "w1.bin") for a in OUT_CMDS[cmd][0]]
        files = {"m.onnx": _mutated(f"models/{base}.onnx", fn), "calib.npy": copy("calib.npy")}
        cases.append(_case(f"output/{cmd}/equals-external-data", "output", argv, files,
                           setup=lambda d, a: mut.SETUP["external_ok"](d), expect="error",
                           fast=True))
    return cases


def output_cases() -> list[Case]:
    """-o traps for every command that writes."""
    cases = _external_weights_cases()
    for cmd, (argv, shape) in OUT_CMDS.items():
        for name, out, setup, expect in _traps(cmd, shape):
            files = {k: INPUTS[k] for k in CMD_INPUTS[cmd] + (("arch.yaml",) if cmd == "build"
                                                                else ())}
            real_argv = [a.replace("{out}", out) for a in argv]
            if name == "input-inside":  # the model lives in the output folder
                real_argv = [a.replace("m.onnx", "out/model.qdq.onnx") for a in real_argv]
                files["out/model.qdq.onnx"] = files.pop("m.onnx")
            outputs = (out,) if expect == "ok" else ()
            safety = name in ("equals-input", "fifo", "char-device", "symlink-to-input",
                              "hardlink-to-input", "readonly-folder")
            cases.append(_case(f"output/{cmd}/{name}", "output", real_argv, files,
                               setup=setup, outputs=outputs, expect=expect,
                               check=CHECKS[cmd] if expect == "ok" else None,
                               fast=True if safety else None))
    return cases


# -- signals and pipes -----------------------------------------------------------------------

def signal_cases() -> list[Case]:
    """Ctrl-C in the middle of long runs; stdout closed early (`| head`)."""
    files = {"m.onnx": copy("models/res.onnx"), "calib.npy": copy("calib.npy")}
    abc = ["prune", "m.onnx", "-o", "out.onnx", "--target-macs", "0.5", "--search", "abc",
           "--abc-cycles", "1000", "--calib", "calib.npy", "--workers", "2"]
    compile_ = ["compile", "m.onnx", "-o", "out", "--calib", "calib.npy", "--quiet",
                "--target-macs", "0.5", "--search", "abc", "--set", "prune.abc_cycles=1000"]
    cases = [
        # A fast machine may finish before the interrupt: then the output must be whole
        # (checked); an interrupted run must leave no output at all (run_case).
        _case("signal/ctrl-c/prune-abc", "signal", abc, files, interrupt_after=4.0,
              outputs=("out.onnx",), check="check_onnx", fast=True),
        _case("signal/ctrl-c/compile-abc", "signal", compile_, files, interrupt_after=4.0,
              outputs=("out",), check="check_compile_dir", fast=True),
        _case("signal/ctrl-c/prune-abc-exec", "signal", abc, files, interrupt_after=8.0,
              outputs=("out.onnx",), check="check_onnx", exec_=True),
    ]
    for cmd, argv in (("inspect", ["inspect", "m.onnx"]), ("groups", ["groups", "m.onnx"]),
                      ("inspect-json", ["inspect", "m.onnx", "--json"]),
                      ("help", ["prune", "--help"])):
        cases.append(_case(f"signal/closed-stdout/{cmd}", "signal", argv, files,
                           stdout_closed=True, fast=cmd == "inspect"))
    return cases


def all_cases() -> list[Case]:
    """Every generated case (the hypothesis byte mutants come on top)."""
    return (model_semantic_cases() + quant_semantic_cases() + binary_cases() + config_cases()
            + calib_cases() + cli_cases() + output_cases() + signal_cases())
