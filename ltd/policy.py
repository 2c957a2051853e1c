"""Policies as plain torch: what the runtime runs, without stable-baselines3.

An :class:`MLPPolicy` is the actor of an SB3 ``MlpPolicy`` (hidden layers + action head), rebuilt
from tensors alone; its deterministic action is the argmax of the action logits, exactly as SB3's
``predict(deterministic=True)`` for a discrete action space. :class:`PolicyController` puts a depth
and a width policy behind the controller interface, reading the same features as training.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ltd.controllers import StaticController
from ltd.features import FeatureView

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class MLPPolicy(torch.nn.Module):
    """Linear layers with an activation between them; the last layer gives action logits."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        if len(weights) != len(biases) or not weights:
            raise ValueError("an MLP policy needs as many biases as weights, and at least one layer")
        self.layers = torch.nn.ModuleList()
        for w, b in zip(weights, biases):
            layer = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
            self.layers.append(layer)
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self._np: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.requires_grad_(False)

    @property
    def obs_size(self) -> int:
        return self.layers[0].in_features

    @property
    def n_actions(self) -> int:
        return self.layers[-1].out_features

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        for layer in self.layers[:-1]:
            x = self._act(layer(x))
        return self.layers[-1](x)

    def act(self, obs: np.ndarray) -> int:
        """Deterministic action for one observation (argmax of the logits).

        Runs in NumPy float32 with the same weights: a decision costs microseconds, where a torch
        module call costs tens of them.
        """
        if self._np is None:
            self._np = [(lay.weight.numpy().T.copy(), lay.bias.numpy().copy()) for lay in self.layers]
            self._np_act = np.tanh if self.activation == "tanh" else (lambda v: np.maximum(v, 0.0))
        *hidden, (w_out, b_out) = self._np
        x = obs
        for w, b in hidden:
            x = np.dot(x, w)
            x += b
            x = self._np_act(x, out=x) if self.activation == "tanh" else self._np_act(x)
        x = np.dot(x, w_out)
        x += b_out
        return int(x.argmax())

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.layers):
            out[f"{prefix}.{i}.weight"] = layer.weight.detach().clone().contiguous()
            out[f"{prefix}.{i}.bias"] = layer.bias.detach().clone().contiguous()
        return out


class PolicyController:
    """Depth and width decisions from policies (either may be absent: then the static partner decides)."""

    def __init__(self, features: FeatureView, widths: list[int], top_k: int, depth_policy: MLPPolicy | None = None,
                 width_policy: MLPPolicy | None = None, static: StaticController | None = None):
        self.features = features
        self.widths = list(widths)
        self.top_k = top_k
        self.depth_policy = depth_policy
        self.width_policy = width_policy
        self.static = static or StaticController(3, top_k, 8)
        self.decision_seconds = 0.0  # time spent deciding (features + networks), for overhead reports
        self.decisions = 0
        self.trace: list | None = None  # when a list: (observation, depth, width) of each cycle, for plots
        self._cache_key: tuple | None = None
        self._cache_obs: np.ndarray | None = None

    def observe(self, engine) -> np.ndarray:
        """Features of the engine's state; the width decision reuses the last depth decision's."""
        tree = engine.tree
        key = (engine.cycle_id, tree.depth if tree is not None else -1)
        if key != self._cache_key:
            self._cache_key, self._cache_obs = key, self.features(engine)
        return self._cache_obs

    def choose_top_k(self, engine) -> int:
        return self.top_k

    def should_expand(self, engine) -> bool:
        if self.depth_policy is None:
            return self.static.should_expand(engine)
        t0 = time.perf_counter()
        go = self.depth_policy.act(self.observe(engine)) == 1
        self.decision_seconds += time.perf_counter() - t0
        self.decisions += 1
        return go

    def choose_width(self, engine) -> int:
        if engine.tree is None or not len(engine.tree):
            width = 0  # nothing drafted: a plain step, whatever the width (no decision to make)
        elif self.width_policy is None:
            width = self.static.choose_width(engine)
        else:
            t0 = time.perf_counter()
            width = self.widths[self.width_policy.act(self.observe(engine))]
            self.decision_seconds += time.perf_counter() - t0
            self.decisions += 1
        if self.trace is not None:
            self.trace.append((self.observe(engine), engine.tree.depth if engine.tree is not None else 0, width))
        return width

    @property
    def label(self) -> str:
        parts = ["depth:policy" if self.depth_policy else f"depth:{self.static.depth}",
                 "width:policy" if self.width_policy else f"width:{self.static.width}"]
        return " ".join(parts)
