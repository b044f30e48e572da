"""The pass contract: `Pass`, `PassResult`, `PassManager`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from compiler.core.errors import ConfigError, DataError, NpucError, PassError
from compiler.core.health import check_graph
from compiler.core.ir import Model

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What a pass returns.

    Attributes:
        model: The (possibly rewritten) model.
        modified: Whether the pass changed anything.
        info: Pass-specific facts for reports (counts, per-layer tables, errors introduced).
    """

    model: Model
    modified: bool
    info: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Base class: a thin wrapper around a plain function doing the work.

    Subclasses implement `call`; `requires` and `ensures` are optional pre/post checks.
    A pass may rewrite the model it is given in place; `PassManager` hands it a copy. Weight
    arrays may be shared with the caller's model (read-only): a pass replaces a constant's
    `values` (or the constant) instead of writing into the array.

    Attributes:
        preserves_function: True when outputs are unchanged (up to float rounding), so the
            pass can be checked numerically against the previous graph.
    """

    preserves_function: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """The pass name used in logs and error messages."""
        return type(self).__name__

    def requires(self, model: Model) -> None:
        """Raise when the model does not meet the pass's preconditions."""

    def call(self, model: Model) -> PassResult:
        """Run the pass."""
        raise NotImplementedError

    def ensures(self, result: PassResult) -> None:
        """Raise when the result breaks the pass's postconditions."""

    def __call__(self, model: Model) -> PassResult:
        """Run `requires`, `call` and `ensures` in order."""
        self.requires(model)
        result = self.call(model)
        self.ensures(result)
        return result


FunctionCheck = Callable[[Model, Model], None]


class PassObserver:
    """Told when each pass of a `PassManager` run starts, finishes or fails (no-ops here).

    The driver subclasses it to time passes, save their outputs and write partial reports.
    """

    def started(self, p: Pass) -> None:
        """`p` is about to run."""

    def finished(self, p: Pass, result: PassResult, seconds: float) -> None:
        """`p` returned `result` after `seconds`."""

    def failed(self, p: Pass, error: Exception, seconds: float) -> None:
        """`p` raised `error` (the manager then raises a `PassError`)."""


class PassManager:
    """Runs passes in order on a copy of the model.

    Args:
        passes: The passes, in order.
        verify_each: Run the graph health check (`compiler.core.health.check_graph`) after
            each pass.
        check_function: Optional `(before, after) -> None` callable (e.g. from
            `compiler.core.numerics.function_checker`) run after each function-preserving pass.
        fixed_point: Repeat the whole sequence until no pass modifies the model (max 10 rounds).
        observer: Told when each pass starts, finishes or fails.
        copy_input: Copy the input model first (the default: callers keep theirs intact).
            The copy is cheap: nodes and tensors are new, weight arrays are shared and
            frozen (`Model.copy`). False hands the model over, for a caller that loaded it
            and keeps no use for it; weights a pass replaces are then freed at once.
    """

    def __init__(self, passes: Sequence[Pass], *, verify_each: bool = False,
                 check_function: FunctionCheck | None = None, fixed_point: bool = False,
                 observer: PassObserver | None = None, copy_input: bool = True) -> None:
        self.passes = list(passes)
        self.verify_each = verify_each
        self.check_function = check_function
        self.fixed_point = fixed_point
        self.observer = observer or PassObserver()
        self.copy_input = copy_input

    def __call__(self, model: Model) -> PassResult:
        """Run the passes; the input model is not modified unless `copy_input` is False."""
        current, done = (model.copy() if self.copy_input else model), []
        modified_any, info = False, {}
        for _ in range(10 if self.fixed_point else 1):
            modified_round = False
            for p in self.passes:
                result = self._run_one(p, current, done)
                current, modified_round = result.model, modified_round or result.modified
                if result.modified or p.name not in info:
                    info[p.name] = result.info
                done.append(p.name)
            modified_any |= modified_round
            if not modified_round:
                break
        return PassResult(current, modified_any, info)

    def _run_one(self, p: Pass, model: Model, done: list[str]) -> PassResult:
        before = model.copy() if self.check_function and p.preserves_function else None
        self.observer.started(p)
        start = time.perf_counter()
        try:
            result = p(model)
            if self.verify_each and result.modified:
                check_graph(result.model)
            if before is not None and result.modified:
                self.check_function(before, result.model)
        except (ConfigError, DataError) as e:  # the user's options or data: already named
            self.observer.failed(p, e, time.perf_counter() - start)
            raise
        except Exception as e:
            self.observer.failed(p, e, time.perf_counter() - start)
            detail = str(e) if isinstance(e, NpucError) else f"{type(e).__name__}: {e}"
            raise PassError(f"error in pass {p.name} after passes {done}: {detail}") from e
        seconds = time.perf_counter() - start
        log.debug("pass %s: modified=%s in %.3fs", p.name, result.modified, seconds)
        self.observer.finished(p, result, seconds)
        return result
