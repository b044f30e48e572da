"""The driver's data boundary: bundled dataset names become typed `Feeds` here, once.

Below the driver, passes and targets take `Feeds` (or the plain sources that
`compiler.core.feeds.load_feeds` reads); only this layer knows the bundled datasets in
`models.datasets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compiler.core.errors import DataError
from compiler.core.feeds import Feeds, Preprocess, input_specs, load_feeds
from compiler.core.ir import Model


def is_dataset_name(source: Any) -> bool:
    """A bare name (no folder, no suffix, not an existing path): a bundled dataset."""
    if not isinstance(source, str):
        return False
    path = Path(source)
    return not path.exists() and "/" not in source and path.suffix == ""


def load_data(source: Any, model: Model, *, limit: int | None = None,
              preprocess: Preprocess | None = None) -> Feeds:
    """Any data source the CLI or config accepts, as validated `Feeds` for `model`.

    Args:
        source: A bundled dataset name, or anything `compiler.core.feeds.load_feeds` reads.
        model: The model whose inputs the data must match.
        limit: Keep at most this many samples.
        preprocess: Image preprocessing for folders of images.

    Raises:
        DataError: Unknown dataset, unreadable source, or data that does not fit the model.
    """
    if is_dataset_name(source):
        ds = _dataset(source, limit)
        first = next(iter(input_specs(model)))
        source = Feeds({first: ds.inputs}, f"dataset {source}", ds.labels)
    return load_feeds(source, model, limit=limit, preprocess=preprocess)


def resolve_source(source: Any, limit: int | None = None) -> Any:
    """A bundled dataset name as its input array; any other source unchanged.

    For passes that load the model themselves (so the model is not needed here).
    """
    return _dataset(source, limit).inputs if is_dataset_name(source) else source


def _dataset(name: str, limit: int | None) -> Any:
    try:
        from models.datasets import load_dataset
    except ImportError as e:
        raise DataError(f"{name}: bundled datasets are unavailable ({e})") from e
    return load_dataset(name, limit=limit)
