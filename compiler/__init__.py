"""npuc: post-training compression compiler for ONNX CNNs on int8 accelerators."""

__version__ = "0.1.0"


def compile(model=None, config=None, out_dir="npuc-out"):  # noqa: A001 - mirrors `npuc compile`
    """Run the whole pipeline (see `compiler.pipeline.compile_model`).

    Args:
        model: ONNX path, bundled model name, `ModelProto` or IR model; None for the config's.
        config: Flat dict of config keys (`docs/config.md`), a YAML path, or None.
        out_dir: Output folder.

    Returns:
        `compiler.pipeline.Result` with `.files`, `.report` and `.results`.
    """
    from compiler.pipeline import compile_model

    return compile_model(model, config, out_dir)
