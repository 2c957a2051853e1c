"""The block drafter: a whole block of draft tokens in ONE forward (DFlash / DFlare style).

A small non-causal transformer reads

* the target's hidden states of the last ``context`` committed positions, taken from several
  target layers; every draft layer mixes those layers with its own learnable softmax weights
  (DFlare's layer-wise fusion) and reads the mix as extra keys and values;
* a block of ``block`` query positions: the root (the last accepted token, through the target's
  own embedding) and ``block - 1`` mask positions;

and returns, for block position ``j``, log-probabilities of the token ``j + 1`` places after the
root, through the target's own output layer (frozen, shared: only the trunk is trained). A
per-position top-k makes a tree of it (:meth:`ltd.engine.SpecEngine.expand`); verification and
acceptance are the engine's, so decoding stays lossless whatever the drafter predicts.

Saved as ``block_drafter/`` beside the pair: ``config.json`` + ``model.safetensors`` (the trunk
only) + ``recipe.json`` (how it was trained). Loading executes no code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ltd.errors import PairError

FOLDER = "block_drafter"


@dataclass
class BlockConfig:
    target_hidden: int
    target_layers: list[int]  # which target decoder layers feed the drafter (their outputs)
    hidden: int = 192
    layers: int = 2
    heads: int = 6
    intermediate: int = 512
    block: int = 8  # positions per forward: the root and block - 1 masks
    context: int = 32  # committed positions the drafter reads
    eps: float = 1e-6
    extra: dict = field(default_factory=dict)


class _Layer(nn.Module):
    def __init__(self, c: BlockConfig, n_sources: int):
        super().__init__()
        self.mix = nn.Parameter(torch.zeros(n_sources))  # softmax weights over the target layers
        self.ctx_norm = nn.RMSNorm(c.hidden, eps=c.eps)
        self.norm1 = nn.RMSNorm(c.hidden, eps=c.eps)
        self.q = nn.Linear(c.hidden, c.hidden, bias=False)
        self.kv = nn.Linear(c.hidden, 2 * c.hidden, bias=False)
        self.o = nn.Linear(c.hidden, c.hidden, bias=False)
        self.norm2 = nn.RMSNorm(c.hidden, eps=c.eps)
        self.up = nn.Linear(c.hidden, 2 * c.intermediate, bias=False)
        self.down = nn.Linear(c.intermediate, c.hidden, bias=False)
        self.heads = c.heads
        with torch.no_grad():  # zero-initialised residual outputs (trains faster, as the pairs do)
            self.o.weight.zero_()
            self.down.weight.zero_()

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, proj: nn.Linear, ctx_pos: torch.Tensor,
                keep: torch.Tensor | None):
        """x [n, B, h] block; ctx [n, C, S, Ht] target features; ctx_pos [C, h]; keep [n, C + B] bool or None."""
        n, b, h = x.shape
        # this layer's mix of the target layers, then the shared projection (linear: same as mixing projections)
        mixed = proj(torch.einsum("ncsh,s->nch", ctx, torch.softmax(self.mix, 0))) + ctx_pos
        r = self.norm1(x)
        kv_in = torch.cat([self.ctx_norm(mixed), r], dim=1)
        k, v = self.kv(kv_in).chunk(2, dim=-1)
        hd = h // self.heads

        def heads(t):
            return t.view(n, -1, self.heads, hd).transpose(1, 2)

        mask = None if keep is None else keep[:, None, None, :]
        att = F.scaled_dot_product_attention(heads(self.q(r)), heads(k), heads(v), attn_mask=mask)
        x = x + self.o(att.transpose(1, 2).reshape(n, b, h))
        gate, up = self.up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class BlockDrafter(nn.Module):
    """The trunk; the target's embedding and output layer are passed in (frozen, not saved)."""

    def __init__(self, config: BlockConfig):
        super().__init__()
        c = self.config = config
        self.proj = nn.Linear(c.target_hidden, c.hidden, bias=False)
        self.ctx_pos = nn.Parameter(torch.zeros(c.context, c.hidden))  # by distance from the root
        self.mask_emb = nn.Parameter(torch.zeros(c.block - 1, c.target_hidden))
        self.blk_pos = nn.Parameter(torch.zeros(c.block, c.hidden))
        self.embed_in = nn.Linear(c.target_hidden, c.hidden, bias=False)
        self.layers = nn.ModuleList(_Layer(c, len(c.target_layers)) for _ in range(c.layers))
        self.norm = nn.RMSNorm(c.hidden, eps=c.eps)
        self.out = nn.Linear(c.hidden, c.target_hidden, bias=False)
        nn.init.normal_(self.ctx_pos, std=0.02)
        nn.init.normal_(self.blk_pos, std=0.02)
        nn.init.normal_(self.mask_emb, std=0.02)

    def forward(self, ctx: torch.Tensor, root_emb: torch.Tensor, head: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """ctx [n, C, S, Ht] (oldest first), root_emb [n, Ht], head [V, Ht] -> logits [n, B, V]."""
        n = root_emb.shape[0]
        blocks = torch.cat([root_emb[:, None], self.mask_emb[None].expand(n, -1, -1)], dim=1)
        x = self.embed_in(blocks) + self.blk_pos
        ctx_pos = self.ctx_pos.flip(0)[-ctx.shape[1]:]  # the last context row is at distance 1
        for layer in self.layers:
            x = layer(x, ctx, self.proj, ctx_pos, keep)
        return F.linear(self.out(self.norm(x)), head)

    # ------------------------------------------------------------------ files

    def save(self, folder: Path, recipe: dict) -> None:
        from safetensors.torch import save

        from ltd.paths import atomic_write_bytes, atomic_write_json

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "model.safetensors",
                           save({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}))
        atomic_write_json(folder / "config.json", asdict(self.config))
        atomic_write_json(folder / "recipe.json", recipe)

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> BlockDrafter:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ltd.paths import read_json

        hint = "train one with `ltd drafter train --pair NAME`"
        if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
            raise PairError(f"no block drafter at {folder}: {hint}")
        data = read_json(folder / "config.json", "block drafter config", PairError, hint)
        try:
            model = cls(BlockConfig(**data))
            model.load_state_dict(load_file(folder / "model.safetensors"))
        except (TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
            raise PairError(f"block drafter at {folder} is corrupt or does not match its config "
                            f"({type(exc).__name__}): {hint}")
        return model.to(device=device, dtype=dtype).eval()


def drafter_folder(pair) -> Path:
    """Where a pair's block drafter lives: beside its target and draft."""
    return pair.target_path.parent / FOLDER


def drafter_fingerprint(pair) -> str | None:
    """A short hash of the pair's block drafter weights (None: it has none): bundles name it."""
    from ltd.paths import sha256_file

    weights = drafter_folder(pair) / "model.safetensors"
    return sha256_file(weights)[:16] if weights.exists() else None


def target_layer_outputs(model, layers: list[int]):
    """Forward hooks that record the outputs of the target's decoder ``layers`` (for training)."""
    store: dict[int, torch.Tensor] = {}
    handles = []
    for i in layers:
        def hook(_m, _args, out, i=i):
            store[i] = out[0] if isinstance(out, tuple) else out
        handles.append(model.model.layers[i].register_forward_hook(hook))
    return store, handles


def config_json(config: BlockConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)
