"""npuc: post-training compression compiler for ONNX CNNs on int8 accelerators."""

from compiler.core import __version__

__all__ = ["__version__", "compile"]


def compile(model=None, config=None, out_dir="npuc-out"):  # noqa: A001 - mirrors `npuc compile`
    """Run the whole pipeline (see `compiler.driver.pipeline.compile_model`).

    Args:
        model: ONNX path, bundled model name, `ModelProto` or IR model; None for the config's.
        config: Flat dict of config keys (`docs/config.md`), a YAML path, or None.
        out_dir: Output folder.

    Returns:
        `compiler.driver.pipeline.Result` with `.files`, `.report` and `.state` (typed stage
        results).
    """
    from compiler.driver.pipeline import compile_model

    return compile_model(model, config, out_dir)
