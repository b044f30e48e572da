"""Shared pass plumbing for passes whose work is a plain function returning a rewrite count."""

from __future__ import annotations

from collections.abc import Callable

from compiler.core.ir import Model
from compiler.core.pass_manager import Pass, PassResult


class RewritePass(Pass):
    """A pass wrapping `rewrite(model) -> int` (the number of rewrites made in place).

    Subclasses set `rewrite = staticmethod(plain_function)`.
    """

    rewrite: Callable[[Model], int]

    def call(self, model: Model) -> PassResult:
        """Run the rewrite function; the pass modified the model when it counted rewrites."""
        count = type(self).rewrite(model)
        return PassResult(model, count > 0, {"rewrites": count})
