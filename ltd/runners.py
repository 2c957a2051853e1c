"""Model runners: a causal LM plus its KV cache, behind the four operations the engine needs.

* ``forward(ids, positions, visible, rows)``: read ``ids`` at ``positions``; ``visible`` is a bool
  mask [n, cached + n] (None: causal over the new tokens, all of the cache visible); returns the
  logits of ``rows`` ("all" or "last").
* ``length``, ``truncate(keep)``, ``keep_prefix_and(prefix, extra)``: KV bookkeeping.

Two implementations over the very same weights:

* :class:`HFRunner` calls the transformers model with a 4D additive float mask and a
  ``DynamicCache``: works for any ``AutoModelForCausalLM`` that accepts custom 4D masks.
* :class:`FastRunner` runs Llama-family decoders (llama, qwen2, qwen3, mistral) with plain torch
  ops and a preallocated cache: on a CPU, per-call framework overhead dominates small models, and
  this path removes most of it. It is checked against the transformers forward when it is built
  and falls back to :class:`HFRunner` if the two disagree.

Plain decoding, drafting and verification all use the same runner kind, so speed comparisons
between them are fair.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import DynamicCache

log = logging.getLogger(__name__)

FAST_TYPES = ("llama", "qwen2", "qwen3", "mistral")


class HFRunner:
    """The transformers forward with a ``DynamicCache``."""

    kind = "hf"

    def __init__(self, model, max_len: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.neg = torch.finfo(model.dtype).min
        self.vocab: torch.Tensor | None = None
        self.capture: list[int] = []
        self.captured: torch.Tensor | None = None
        self.reset()

    def capture_layers(self, layers: list[int]) -> None:
        """Record the outputs of these decoder layers at every forward: ``captured`` [n, S, h]."""
        from ltd.block_drafter import target_layer_outputs

        self.capture = list(layers)
        key = tuple(layers)
        held = getattr(self.model, "_ltd_layer_hooks", None)  # one set of hooks per model, however many engines
        if held is None or held[0] != key:
            for handle in (held[2] if held else []):
                handle.remove()
            store, handles = target_layer_outputs(self.model, self.capture)
            self.model._ltd_layer_hooks = (key, store, handles)
        self._store = self.model._ltd_layer_hooks[1]

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)

    def restrict_vocab(self, ids: torch.Tensor) -> None:
        """Return logits of these token ids only (column j is token ``ids[j]``)."""
        self.vocab = ids.to(self.device)

    @property
    def length(self) -> int:
        return int(self.cache.get_seq_length())

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, visible: torch.Tensor | None = None,
                rows: str = "all") -> torch.Tensor:
        kwargs = {}
        if visible is not None:
            mask = torch.zeros(visible.shape, dtype=self.model.dtype, device=self.device)
            mask.masked_fill_(~visible, self.neg)
            kwargs["attention_mask"] = mask[None, None]
        if positions is not None:
            kwargs["position_ids"] = positions[None]
        out = self.model(input_ids=ids[None], cache=self.cache, use_cache=True,
                         logits_to_keep=1 if rows == "last" else 0, **kwargs)
        logits = out.logits[0]
        if self.capture:
            self.captured = torch.stack([self._store[i][0] for i in self.capture], dim=1)
        return logits if self.vocab is None else logits[:, self.vocab]

    def truncate(self, keep: int) -> None:
        extra = self.length - keep
        if extra > 0:
            self.cache.crop(-extra)

    def keep_prefix_and(self, prefix: int, extra: list[int]) -> None:
        """Keep positions ``[0, prefix)`` and then ``extra`` (ascending, all >= prefix)."""
        n = len(extra)
        if n == 0 or (extra[0] == prefix and extra[-1] == prefix + n - 1):
            self.truncate(prefix + n)
            return
        idx = torch.tensor(extra, dtype=torch.long, device=self.device)
        for layer in self.cache.layers:
            layer.keys = torch.cat([layer.keys[..., :prefix, :], layer.keys.index_select(-2, idx)], dim=-2)
            layer.values = torch.cat([layer.values[..., :prefix, :], layer.values.index_select(-2, idx)], dim=-2)


class FastRunner:
    """Plain-torch forward of a Llama-family decoder over the model's own weights, static KV buffers."""

    kind = "fast"

    def __init__(self, model, max_len: int):
        cfg = model.config
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = model.dtype
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.norm_w, self.eps = inner.norm.weight, float(cfg.rms_norm_eps)
        self.head_w = model.lm_head.weight
        self.vocab: torch.Tensor | None = None
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                (a.q_proj.weight, a.q_proj.bias), (a.k_proj.weight, a.k_proj.bias), (a.v_proj.weight, a.v_proj.bias),
                (a.o_proj.weight, a.o_proj.bias),
                getattr(getattr(a, "q_norm", None), "weight", None), getattr(getattr(a, "k_norm", None), "weight", None),
                m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight,
            ))
        self.max_len = max_len
        with torch.no_grad():
            pos = torch.arange(max_len, device=self.device)[None]
            cos, sin = inner.rotary_emb(self.embed[:1][None], pos)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # [max_len, head_dim]
        shape = (len(self.layers), 1, self.n_kv, max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.gqa = self.n_kv != self.n_heads
        self.length = 0
        self.capture: list[int] = []
        self.captured: torch.Tensor | None = None

    def capture_layers(self, layers: list[int]) -> None:
        """Record the outputs of these decoder layers at every forward: ``captured`` [n, S, h]."""
        self.capture = list(layers)

    @staticmethod
    def supports(model) -> bool:
        cfg = model.config
        return (getattr(cfg, "model_type", None) in FAST_TYPES and getattr(cfg, "hidden_act", "silu") == "silu"
                and not getattr(cfg, "sliding_window", None) and not getattr(cfg, "use_sliding_window", False))

    def reset(self) -> None:
        self.length = 0

    def restrict_vocab(self, ids: torch.Tensor) -> None:
        """Compute logits of these token ids only: a smaller output matrix to read per step."""
        self.vocab = ids.to(self.device)
        self.head_w = self.model.lm_head.weight[self.vocab].contiguous()

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, visible: torch.Tensor | None = None,
                rows: str = "all") -> torch.Tensor:
        n = int(ids.numel())
        start, end = self.length, self.length + n
        if end > self.max_len:
            raise RuntimeError(f"KV buffer of {self.max_len} positions is full")
        if positions is None:
            cos, sin = self.cos[start:end], self.sin[start:end]
        else:
            cos, sin = self.cos[positions], self.sin[positions]
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        if visible is None and n > 1:
            visible = torch.ones(n, end, dtype=torch.bool, device=self.device).tril(diagonal=start)
        mask = None if visible is None else visible[None, None]
        x = F.embedding(ids, self.embed)[None]  # [1, n, h]
        hd, eps = self.head_dim, self.eps
        kept = []
        for i, (w_in, w_post, q, k, v, o, qn, kn, wg, wu, wd) in enumerate(self.layers):
            r = F.rms_norm(x, (x.shape[-1],), w_in, eps)
            qs = F.linear(r, *q).view(1, n, -1, hd)
            ks = F.linear(r, *k).view(1, n, -1, hd)
            vs = F.linear(r, *v).view(1, n, -1, hd)
            if qn is not None:
                qs = F.rms_norm(qs, (hd,), qn, eps)
                ks = F.rms_norm(ks, (hd,), kn, eps)
            qs = self._rope(qs, cos, sin).transpose(1, 2)
            ks = self._rope(ks, cos, sin).transpose(1, 2)
            self.k[i, :, :, start:end] = ks
            self.v[i, :, :, start:end] = vs.transpose(1, 2)
            att = F.scaled_dot_product_attention(qs, self.k[i, :, :, :end], self.v[i, :, :, :end], attn_mask=mask,
                                                 enable_gqa=self.gqa)
            x = x + F.linear(att.transpose(1, 2).reshape(1, n, -1), *o)
            r = F.rms_norm(x, (x.shape[-1],), w_post, eps)
            x = x + F.linear(F.silu(F.linear(r, wg)) * F.linear(r, wu), wd)
            if i in self.capture:
                kept.append(x[0])
        if self.capture:
            self.captured = torch.stack(kept, dim=1)
        self.length = end
        if rows == "last":
            x = x[:, -1:]
        return F.linear(F.rms_norm(x, (x.shape[-1],), self.norm_w, eps), self.head_w)[0]

    def truncate(self, keep: int) -> None:
        self.length = min(self.length, keep)

    def keep_prefix_and(self, prefix: int, extra: list[int]) -> None:
        n = len(extra)
        if n and not (extra[0] == prefix and extra[-1] == prefix + n - 1):
            idx = torch.tensor(extra, dtype=torch.long, device=self.device)
            self.k[:, :, :, prefix:prefix + n] = self.k.index_select(3, idx)
            self.v[:, :, :, prefix:prefix + n] = self.v.index_select(3, idx)
        self.length = prefix + n


@torch.inference_mode()
def _agrees(fast: FastRunner, model, tol: float = 1e-3) -> bool:
    """Compare the fast path with transformers on a short sequence, a tree mask included."""
    ref = HFRunner(model, fast.max_len)
    n = min(8, fast.max_len // 2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (n,), generator=gen).to(fast.device)
    vis = torch.zeros(3, n, dtype=torch.bool, device=fast.device)
    vis[:, : n - 3] = True  # the prefix; then two siblings and a child of the first
    vis[0, n - 3] = vis[1, n - 2] = vis[2, n - 3] = vis[2, n - 1] = True
    pos = torch.tensor([n - 3, n - 3, n - 2], device=fast.device)
    fast.reset()
    a = [fast.forward(ids[:-3]), fast.forward(ids[-3:], pos, vis)]
    b = [ref.forward(ids[:-3]), ref.forward(ids[-3:], pos, vis)]
    fast.reset()
    return all(torch.allclose(x.float(), y.float(), atol=tol, rtol=tol) for x, y in zip(a, b))


def make_runner(model, max_len: int, backend: str = "auto"):
    """``backend``: "fast", "hf", or "auto" (fast where supported and verified, else hf)."""
    if backend not in ("auto", "fast", "hf"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend == "hf" or (backend == "auto" and not FastRunner.supports(model)):
        return HFRunner(model, max_len)
    fast = FastRunner(model, max_len)
    if backend == "auto" and not _agrees(fast, model):
        log.warning("fast forward disagrees with transformers for %s: using the transformers forward",
                    model.config.model_type)
        return HFRunner(model, max_len)
    return fast
