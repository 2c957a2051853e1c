"""The few KV-cache operations the engine needs, over transformers' ``DynamicCache``.

Kept in one place because the cache API moves between transformers releases.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def new_cache(model) -> DynamicCache:
    return DynamicCache(config=model.config)


def length(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def truncate(cache: DynamicCache, keep: int) -> None:
    """Keep the first ``keep`` positions."""
    extra = length(cache) - keep
    if extra > 0:
        cache.crop(-extra)


def keep_prefix_and(cache: DynamicCache, prefix: int, extra: list[int]) -> None:
    """Keep positions ``[0, prefix)`` and then positions ``extra`` (ascending, all >= prefix)."""
    n = len(extra)
    if n == 0 or (extra[0] == prefix and extra[-1] == prefix + n - 1):  # contiguous: a crop is enough
        truncate(cache, prefix + n)
        return
    idx = torch.tensor(extra, dtype=torch.long, device=cache.layers[0].keys.device)
    for layer in cache.layers:
        tail_k = layer.keys.index_select(-2, idx)
        tail_v = layer.values.index_select(-2, idx)
        layer.keys = torch.cat([layer.keys[..., :prefix, :], tail_k], dim=-2)
        layer.values = torch.cat([layer.values[..., :prefix, :], tail_v], dim=-2)
