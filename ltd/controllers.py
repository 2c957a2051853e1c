"""Who decides each cycle's shape: how wide a tree (top_k), how deep (stop or go on), how much to verify.

A controller is asked, in this order, by :func:`ltd.runtime.run_cycle`:

1. ``choose_top_k(engine)`` once, when the cycle opens;
2. ``should_expand(engine)`` before each expansion (the depth decision);
3. ``choose_width(engine)`` once, before verification (the width decision).

Training, the runtime, benchmarks and the oracle all drive cycles through this one interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ltd.errors import ConfigError


class Controller(Protocol):
    def choose_top_k(self, engine) -> int: ...

    def should_expand(self, engine) -> bool: ...

    def choose_width(self, engine) -> int: ...


@dataclass(frozen=True)
class StaticController:
    """A fixed tree: ``depth`` expansions of ``top_k`` nodes, the best ``width`` nodes verified.

    ``depth=0`` is plain autoregressive decoding through the same target forward path.
    """

    depth: int
    top_k: int = 1
    width: int = 1

    def __post_init__(self):
        if self.depth < 0 or self.top_k < 1 or self.width < 0:
            raise ConfigError(f"bad static tree depth={self.depth} top_k={self.top_k} width={self.width}: "
                              "need depth >= 0, top_k >= 1, width >= 0")
        if self.depth and self.width == 0:
            raise ConfigError(f"static tree of depth {self.depth} verifies nothing: give width >= 1")

    def choose_top_k(self, engine) -> int:
        return self.top_k

    def should_expand(self, engine) -> bool:
        return engine.tree.depth < self.depth

    def choose_width(self, engine) -> int:
        return self.width

    @property
    def label(self) -> str:
        return f"d{self.depth}k{self.top_k}w{self.width}"


def plain() -> StaticController:
    """Autoregressive decoding: no draft, one target token per cycle."""
    return StaticController(depth=0, top_k=1, width=0)
