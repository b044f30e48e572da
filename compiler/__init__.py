"""npuc: post-training compression compiler for ONNX CNNs on int8 accelerators."""

from compiler.core import __version__

__all__ = ["__version__", "compile"]


def compile(model=None, config=None, out_dir="npuc-out", *,  # noqa: A001 - mirrors the CLI
            calibration=None):
    """Run the whole pipeline (see `compiler.driver.pipeline.compile_model`).

    Args:
        model: ONNX path, bundled model name, `ModelProto` or IR model; None for the config's.
        config: Dict of config keys (`docs/config.md`; flat dotted keys or nested like the
            YAML), a YAML path, or None.
        out_dir: Output folder.
        calibration: Calibration data as objects (an onnxruntime `CalibrationDataReader`,
            an array, a dict of arrays); replaces the config's `calibration.data`.

    Returns:
        `compiler.driver.pipeline.Result` with `.files`, `.report` and `.state` (typed stage
        results).
    """
    from compiler.driver.pipeline import compile_model

    return compile_model(model, config, out_dir, calibration=calibration)
