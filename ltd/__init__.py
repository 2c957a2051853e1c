"""LTD: learning to draft — adaptive tree drafting for speculative decoding.

The Python API:

    >>> import ltd
    >>> pair = ltd.load_pair("tiny")                 # built-in pair (or "target=PATH,draft=PATH")
    >>> out = ltd.generate(pair, "def parse(", depth=3, top_k=4, width=8)
    >>> out.text, out.tokens_per_s
"""

from ltd.controllers import StaticController
from ltd.engine import CycleResult, SpecEngine
from ltd.errors import ConfigError, LtdError, PairError, PromptError
from ltd.export import Bundle, BundleError, load_bundle
from ltd.pair import Pair, load_pair
from ltd.runtime import Generation, generate, run_cycle

__version__ = "0.1.0"

from ltd.env import register_envs  # noqa: E402  (registers ltd/<spec>-<view>-v0 ids)

register_envs()

__all__ = [
    "Bundle", "BundleError", "ConfigError", "CycleResult", "load_bundle", "Generation", "LtdError", "Pair", "PairError", "PromptError", "SpecEngine",
    "StaticController", "generate", "load_pair", "run_cycle",
]
