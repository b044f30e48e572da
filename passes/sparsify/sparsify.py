"""1xN block sparsification of a model: plan, (reorder), score, mask, (reconstruct), record.

`sparsify_model` is the plain function the CLI and the compile pipeline call; `BlockSparsify`
is the pass wrapping it. Shapes never change: zeroed blocks are zeros in the original weight
initializers, and the masks travel in the model's metadata (see `metadata.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from compiler.core.ir import Model
from compiler.core.pass_manager import Pass, PassResult
from compiler.core.sparsity import LayerMask, write_sparsity_metadata
from passes.canonicalize import canonicalize
from passes.prune.channels import read_channels
from passes.sparsify.activation import (
    ChannelStats,
    bias_correct,
    block_input_scale,
    input_channel_stats,
)
from passes.sparsify.criteria import (
    NEEDS_DATA,
    block_mask,
    element_mask,
    select_global,
    select_uniform,
    unit_scores,
)
from passes.sparsify.layers import (
    Layer,
    boundary_layers,
    ineligible_reason,
    matches_any,
    node_macs,
    weight_layers,
)
from passes.sparsify.options import Plan, SparsifyOptions
from passes.sparsify.reconstruct import (
    ACT_ITERS,
    ReconOptions,
    Teacher,
    block_refit,
    dense_followers,
    mask_weights,
    obs_mask,
    reconstruct,
)
from passes.sparsify.reorder import reorder_with_layout
from passes.sparsify.report import build_report

log = logging.getLogger(__name__)


def plan_layers(model: Model, opts: SparsifyOptions) -> Plan:
    """Split the weight layers into eligible ones and skipped ones with their reason."""
    layers = weight_layers(model, node_macs(model))
    first, last = boundary_layers(model, layers)
    plan = Plan()
    for layer in layers:
        reason = _exclusion(layer.name, first, last, opts) or ineligible_reason(layer, opts.block)
        if reason:
            plan.skipped[layer.name] = reason
        else:
            plan.layers.append(layer)
    for node in model.graph.nodes:  # listed so the report says why they stay dense
        if node.op == "ConvTranspose":
            plan.skipped[node.name] = "ConvTranspose: 1xN blocks are defined for Conv/Gemm/MatMul"
    return plan


def _exclusion(name: str, first: set[str], last: set[str], opts: SparsifyOptions) -> str | None:
    if matches_any(name, opts.exclude):
        return "excluded by --exclude"
    if not opts.include_first_last and name in first:
        return "first layer (kept dense by default; --include-first-last)"
    if not opts.include_first_last and name in last:
        return "last layer (kept dense by default; --include-first-last)"
    return None


def _check_plan(plan: Plan, block: int) -> None:
    if plan.layers:
        return
    divisibility = [n for n, r in plan.skipped.items() if "not a multiple of N" in r]
    if divisibility:
        raise ConfigError(f"--block {block}: N divides the output channels of no eligible "
                          f"layer (e.g. {divisibility[0]!r}: {plan.skipped[divisibility[0]]})")
    why = "; ".join(f"{n}: {r}" for n, r in list(plan.skipped.items())[:3])
    raise ConfigError("no layer can be sparsified: "
                      + (why or "no Conv/Gemm/MatMul with a constant weight"))


def select_masks(layers: Sequence[Layer], opts: SparsifyOptions,
                 stats: Mapping[str, ChannelStats] | None = None) -> dict[str, LayerMask]:
    """Block masks of the eligible layers (criterion + uniform or global selection).

    `stats` (node -> input channel statistics) is needed by the activation-aware criterion.
    """
    scales = [block_input_scale(x, stats[x.name].std, opts.block)
              if opts.criterion in NEEDS_DATA else None for x in layers]
    scores = [unit_scores(layer.logical(), opts.block, opts.criterion, scale)
              for layer, scale in zip(layers, scales, strict=True)]
    if opts.global_budget:
        unit_macs = [layer.macs / s.size for layer, s in zip(layers, scores, strict=True)]
        keeps = select_global(scores, unit_macs, opts.sparsity)
    else:
        keeps = [select_uniform(s, opts.sparsity) for s in scores]
    block = 1 if opts.criterion == "css" else opts.block
    masks = {}
    for layer, keep in zip(layers, keeps, strict=True):
        mask = block_mask(keep, layer.cin, opts.criterion)
        masks[layer.name] = LayerMask(layer.name, layer.weight.name, block, mask, layer.layout,
                                      float(1.0 - mask.mean()))
    return masks


def _bias_correct(layers: Sequence[Layer], masks: Mapping[str, LayerMask],
                  stats: Mapping[str, ChannelStats]) -> list[str]:
    """Fold the mean contribution of the blocks about to be zeroed into each layer's bias."""
    done = []
    for layer in layers:
        m = masks[layer.name]
        keep = element_mask(m.mask, m.block, layer.logical().shape)
        if bias_correct(layer, keep, stats[layer.name].mean):
            done.append(layer.name)
    return done


def apply_masks(layers: Sequence[Layer], masks: Mapping[str, LayerMask]) -> None:
    """Zero the masked blocks of each layer's weight, in place."""
    for layer in layers:
        mask_weights(layer, masks[layer.name])


def sparsify_model(model: Model, block: int = 4, sparsity: float = 0.5, *,
                   calib: Mapping[str, np.ndarray] | Any = None,
                   teacher: Model | str | Callable[[], Model | None] | None = None,
                   **options: Any) -> tuple[Model, dict[str, Any]]:
    """1xN-sparsify a (canonicalized) model; the input model is not modified.

    Args:
        model: The float model, BatchNorm already folded (`passes.canonicalize`).
        block: N, output channels per block.
        sparsity: Block sparsity per layer, or of the eligible MACs with `global_budget`.
        calib: Calibration inputs (dict of arrays or `compiler.core.feeds.Feeds`); needed by
            `reconstruct=True`.
        teacher: The uncompressed float model the re-fit matches (a model, a path, or a
            callable returning the model); default: the `teacher` option, else `model`
            itself. For a
            pruned `model` its `npuc.prune.channels` metadata maps the channels.
        **options: Further `SparsifyOptions` fields (criterion, global_budget, exclude,
            include_first_last, reorder, reconstruct, refit_dense, refit_activation,
            refit_block,
            teacher, ridge, rows).

    Returns:
        (sparse model with metadata `npuc.sparsity`, report dict).

    Raises:
        ConfigError: Bad options, N dividing no eligible layer, or reconstruction without data.
    """
    unknown = set(options) - set(SparsifyOptions.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown sparsify option(s): {', '.join(sorted(unknown))}")
    opts = SparsifyOptions(block=block, sparsity=sparsity, **options)
    opts.validate()
    if calib is None and needs_calib(opts):
        raise ConfigError(calib_missing(opts))
    return _run(model.copy(), opts, calib, teacher)


def needs_calib(opts: SparsifyOptions) -> bool:
    """Whether these options need calibration data."""
    return opts.reconstruct or opts.criterion in NEEDS_DATA


def calib_missing(opts: SparsifyOptions) -> str:
    """The one-line message when these options need calibration data and there is none."""
    data_criterion = opts.criterion in NEEDS_DATA
    if data_criterion and opts.reconstruct:
        return (f"sparsify: --criterion {opts.criterion} and --reconstruct need calibration "
                "data: add --calib DATA, or opt out with --criterion l1 --no-reconstruct")
    if data_criterion:
        return (f"sparsify: --criterion {opts.criterion} needs calibration data: add "
                "--calib DATA, or pick l1, l2 or css")
    return ("sparsify: --reconstruct needs calibration data: add --calib DATA, or opt out "
            "with --no-reconstruct")


def _float_teacher(given: Model | str | Callable[[], Model | None] | None,
                   opts: SparsifyOptions) -> Model | None:
    """The float teacher: `given` (model, path or callable giving the model) or `opts.teacher`."""
    if callable(given):
        given = given()
    given = opts.teacher if given is None else given
    if isinstance(given, str):
        given = load_model(given)
    return canonicalize(given).model if given is not None else None


def _compose(model: Model, channels: Mapping[str, np.ndarray], layout) -> dict[str, np.ndarray]:
    """Student tensor -> float channel per position: the pruning map after the reordering."""
    out = dict(channels)
    if layout is None:
        return out
    for name in model.graph.tensors():
        if name in layout.slots:
            pos = np.asarray(layout.old_positions(name))
            if np.array_equal(pos, np.arange(len(pos))):
                continue
            out[name] = channels[name][pos] if name in channels else pos
    return out


def _run(model: Model, opts: SparsifyOptions, calib: Any,
         float_model: Model | Callable[[], Model | None] | None = None,
         ) -> tuple[Model, dict[str, Any]]:
    plan = plan_layers(model, opts)
    _check_plan(plan, opts.block)
    reorder_info: dict[str, str] = {}
    channels, layout = read_channels(model), None
    if opts.reorder:
        model, reorder_info, layout = reorder_with_layout(
            model, [layer.name for layer in plan.layers])
        plan = plan_layers(model, opts)
    teacher = None
    if opts.reconstruct:
        float_model = _float_teacher(float_model, opts)
        teacher = Teacher(model.copy(), float_model,
                          _compose(model, channels, layout) if float_model else {})
    feeds = calib.arrays if hasattr(calib, "arrays") else calib
    stats = input_channel_stats(model, plan.layers, feeds) if feeds is not None else None
    masks, corrected, pending = {}, [], [layer.name for layer in plan.layers]
    if opts.criterion != "obs":
        masks, pending = select_masks(plan.layers, opts, stats), []
        corrected = _bias_correct(plan.layers, masks, stats) if stats else []
        apply_masks(plan.layers, masks)
    recon, dense, blocks = {}, {}, None
    if teacher is not None:
        sparse = [layer.name for layer in plan.layers]
        dense = dense_followers(weight_layers(model), sparse) if opts.refit_dense else {}
        masks.update(dense)
        select = partial(obs_mask, block=opts.block, sparsity=opts.sparsity)
        recon_opts = ReconOptions(opts.rows, opts.ridge,
                                  act_iters=ACT_ITERS if opts.refit_activation else 0)
        recon = reconstruct(model, teacher, masks, feeds, recon_opts, select=select,
                            pending=pending)
        if opts.refit_block:
            blocks = block_refit(model, teacher, masks, feeds)
        for name in dense:
            del masks[name]
    write_sparsity_metadata(model, opts.block, masks, opts.criterion)
    report = build_report(model, plan, masks, opts, reorder_info, recon)
    report["bias_corrected"] = corrected
    report["refit_dense"] = {name: recon[name] for name in dense}
    report["refit_block"] = blocks
    report["float_teacher"] = list(teacher.used) if teacher is not None else []
    return model, report


class BlockSparsify(Pass):
    """Pass wrapper around `sparsify_model` (changes the function: not checked numerically)."""

    preserves_function = False

    def __init__(self, block: int = 4, sparsity: float = 0.5, *, calib: Any = None,
                 teacher: Model | Callable[[], Model | None] | None = None,
                 **options: Any) -> None:
        self.block, self.sparsity, self.calib, self.options = block, sparsity, calib, options
        self.teacher = teacher

    @classmethod
    def from_options(cls, opts: SparsifyOptions, calib: Any = None,
                     teacher: Model | Callable[[], Model | None] | None = None,
                     ) -> BlockSparsify:
        """The pass for typed options (what `npuc sparsify` and `npuc compile` build).

        `teacher`: the float model (or a callable resolved when the pass runs: the compile
        pipeline's canonical original exists only then).
        """
        rest = {k: v for k, v in vars(opts).items() if k not in ("block", "sparsity", "teacher")}
        return cls(opts.block, opts.sparsity, calib=calib,
                   teacher=opts.teacher if teacher is None else teacher, **rest)

    def call(self, model: Model) -> PassResult:
        """Sparsify; `info` is the report of `sparsify_model`."""
        out, report = sparsify_model(model, self.block, self.sparsity, calib=self.calib,
                                     teacher=self.teacher, **self.options)
        return PassResult(out, report["zero_blocks"] > 0 or report["reordered"] > 0, report)
