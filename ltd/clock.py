"""Clocks: time is a dependency of the engine, never read ad hoc.

``WallClock`` reads ``time.perf_counter`` after synchronising the device, so on a GPU a reading
covers the kernels launched before it, not only their launch.
"""

from __future__ import annotations

import time

import torch


class WallClock:
    """Synchronised wall clock for one device."""

    name = "wall"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._sync = self.device.type == "cuda"

    def now(self) -> float:
        if self._sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
