"""Train a pair's block drafter by distillation from its target (``ltd drafter train``).

Data: windows of the pair's training corpus and of the target's own continuations (greedy and
sampled), as the autoregressive draft was distilled. For each window the target runs once (no
grad) and its decoder-layer outputs are recorded; at random anchors ``a`` the drafter reads the
features of positions ``[a - context, a)`` and the root token ``a``, and block position ``j`` learns
the target's distribution at ``a + j`` (soft cross-entropy, i.e. KL to the target). Resumable
(AdamW + warmup + cosine, the pairs' training loop); the result is saved beside the pair.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch
import torch.nn.functional as F

from ltd.block_drafter import BlockConfig, BlockDrafter, drafter_folder, target_layer_outputs
from ltd.errors import PairError
from ltd.pair import Pair

log = logging.getLogger(__name__)
HELD_OUT_POOL = 16  # the target's own continuations kept out of training, for evaluation


@dataclasses.dataclass
class DrafterRecipe:
    steps: int = 1200
    batch: int = 8
    seq_len: int = 192
    anchors: int = 16  # anchors per window
    lr: float = 2e-3
    pool_sequences: int = 128
    hidden: int = 192
    layers: int = 2
    heads: int = 6
    intermediate: int = 512
    block: int = 8
    context: int = 32
    seed: int = 0


def _features(target, layers: list[int], ids: torch.Tensor):
    store, handles = target_layer_outputs(target, layers)
    try:
        logits = target(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return logits, torch.stack([store[i] for i in layers], dim=2)  # [b, T, S, Ht]


def _gather(ids, logits, feats, anchors, cfg: BlockConfig):
    """Per anchor: context features, root id, target log-probs at the block."""
    b_idx = anchors[:, 0]
    a = anchors[:, 1]
    ctx_pos = a[:, None] - cfg.context + torch.arange(cfg.context)[None]  # [n, C]
    blk_pos = a[:, None] + torch.arange(cfg.block)[None]  # [n, B]
    ctx = feats[b_idx[:, None], ctx_pos]  # [n, C, S, Ht]
    p_log = F.log_softmax(logits[b_idx[:, None], blk_pos].float(), dim=-1)  # [n, B, V]
    return ctx, ids[b_idx, a], p_log


def block_loss(drafter: BlockDrafter, target, layers, ids: torch.Tensor, gen: torch.Generator,
               anchors_per_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft cross-entropy to the target, leading greedy matches per anchor) on one batch.

    A block position matches when its argmax is the target's argmax there; the leading matches are
    what a chain drafted from the block would get accepted under greedy decoding of this text."""
    cfg = drafter.config
    with torch.no_grad():
        logits, feats = _features(target, layers, ids)
    b, t = ids.shape
    lo, hi = cfg.context, t - cfg.block - 1
    a = torch.randint(lo, hi, (b, anchors_per_seq), generator=gen)
    anchors = torch.stack([torch.arange(b)[:, None].expand_as(a), a], dim=-1).reshape(-1, 2)
    ctx, root, p_log = _gather(ids, logits, feats, anchors, cfg)
    embed = target.get_input_embeddings().weight
    head = target.get_output_embeddings().weight
    q_log = F.log_softmax(drafter(ctx, embed[root], head).float(), dim=-1)
    loss = -(p_log.exp() * q_log).sum(-1).mean()
    with torch.no_grad():
        hit = (q_log.argmax(-1) == p_log.argmax(-1)).int()
        leading = hit.cumprod(dim=1).sum(dim=1).float()
    return loss, leading


def _work_dir(work, r: DrafterRecipe, pair: Pair, seq_len: int):
    """The build folder, emptied when what it holds was made for another recipe or pair.

    Only more steps keep a previous build (its checkpoint continues, the schedule stretches)."""
    import json
    import shutil

    from ltd.paths import atomic_write_json

    state = {"recipe": {k: v for k, v in dataclasses.asdict(r).items() if k != "steps"},
             "pair": pair.fingerprint(), "seq_len": seq_len}
    path = work / "recipe.json"
    try:
        old = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        old = None
    if old is not None and old != state:
        log.warning("%s: the recipe or the pair changed since the last build: starting over", work)
        shutil.rmtree(work)
    elif old is None and work.exists():
        shutil.rmtree(work)  # made before builds were recorded, or its record is damaged
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)
    return work


def train_block_drafter(pair: Pair, recipe: DrafterRecipe | None = None, device: str = "cpu") -> dict:
    """Distil a block drafter for ``pair``; save it in the pair's folder; return its figures."""
    from ltd.paths import ltd_home
    from ltd.zoo import Recipe, encode_documents, generate_pool, load_documents, random_windows, split_documents
    from ltd.zoo import train_loop as zoo_train_loop

    r = recipe or DrafterRecipe()
    if "recipe" not in pair.meta:
        raise PairError(f"pair {pair.name} has no build recipe: block drafters train on built-in pairs "
                        f"(ltd pair build --preset NAME)")
    target = pair.target.to(device).float().eval()
    for p in target.parameters():
        p.requires_grad_(False)
    layers = list(range(target.config.num_hidden_layers))
    seq_len = min(r.seq_len, int(target.config.max_position_embeddings))
    cfg = BlockConfig(target_hidden=target.config.hidden_size, target_layers=layers, hidden=r.hidden,
                      layers=r.layers, heads=r.heads, intermediate=r.intermediate, block=r.block, context=r.context)
    torch.manual_seed(r.seed)
    drafter = BlockDrafter(cfg).to(device)
    work = _work_dir(ltd_home() / "builds" / f"{pair.name}-block", r, pair, seq_len)

    docs = load_documents()
    train_docs, heldout_docs = split_documents(docs)
    stream = encode_documents(pair.tokenizer, train_docs)
    heldout = encode_documents(pair.tokenizer, heldout_docs)
    pair_recipe = Recipe.from_dict(pair.meta["recipe"])
    pool_recipe = dataclasses.replace(pair_recipe, pool_sequences=r.pool_sequences, seq_len=seq_len,
                                      pool_prompt_len=r.context + 8)
    pool_path = work / "pool.pt"
    if pool_path.exists():
        pool = torch.load(pool_path, weights_only=True)
    else:
        pool = generate_pool(target, stream, pool_recipe, r.seed + 2)
        torch.save(pool, pool_path)

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        half = r.batch // 2
        real = random_windows(stream, r.batch - half, seq_len, gen)
        own = pool[torch.randint(0, len(pool) - HELD_OUT_POOL, (half,), generator=gen)]
        ids = torch.cat([real, own]).to(device)
        return block_loss(drafter, target, layers, ids, gen, r.anchors)[0]

    t0 = time.time()
    hp = dataclasses.replace(pair_recipe, warmup_steps=30)
    zoo_train_loop(drafter, loss_fn, r.steps, r.lr, hp, work / "drafter.ckpt", f"{pair.name} block drafter")
    figures = evaluate(drafter, target, layers, heldout, pool, device, seq_len)
    figures["train_seconds_this_run"] = round(time.time() - t0, 1)
    drafter.save(drafter_folder(pair), {"recipe": dataclasses.asdict(r), "figures": figures,
                                        "pair_fingerprint": pair.fingerprint()})
    return figures


@torch.no_grad()
def evaluate(drafter: BlockDrafter, target, layers, heldout: torch.Tensor, pool: torch.Tensor, device: str,
             seq_len: int) -> dict:
    """Leading greedy matches of the block (what a chain would accept) on held-out text and on the
    target's own continuations, and the per-position match rate."""
    gen = torch.Generator().manual_seed(1234)
    from ltd.zoo import random_windows

    out = {}
    for name, ids in (("heldout", random_windows(heldout, 16, seq_len, gen)), ("own", pool[-HELD_OUT_POOL:, :seq_len])):
        loss, leading = block_loss(drafter.eval(), target, layers, ids.to(device), gen, 16)
        out[f"{name}_loss"] = round(float(loss), 4)
        out[f"{name}_leading_matches"] = round(float(leading.mean()), 4)
    return out
