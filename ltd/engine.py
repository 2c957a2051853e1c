"""One draft-and-verify cycle as small steps a controller can stop between.

    engine.reset(prompt_ids)
    engine.begin(top_k)          # a new, empty draft tree
    engine.expand()              # one batched draft forward over the frontier (repeat: depth)
    result = engine.verify(w)    # the best w tree nodes in ONE target pass, accept, commit

Invariants between cycles (``L = len(engine.tokens)``):

* the target's KV cache holds ``tokens[:L-1]``; the last token (the *root*) is verified next;
* the draft's KV cache holds ``tokens[:draft_len]``; it reads ``tokens[draft_len:]`` (the tokens
  it has not seen: the accepted path and the target's bonus token) at its next expansion, so a
  cycle of depth 0 (a plain target step) costs no draft work at all;
* with the block drafter (``drafter="block"``), ``feats[:L-1]`` holds the target's layer outputs at
  ``tokens[:L-1]``, written by the same passes that fill the target's cache (prefill, and the root and
  accepted rows of each verification); one drafter forward per cycle reads the last of them.

Acceptance is greedy (the target's argmax) or, with ``temperature > 0``, by sampling the target's
own distribution at each node and following a drafted child when the sample equals it; since every
accepted or bonus token is a sample of the target at its position, the output keeps the target's
distribution exactly, whatever the draft.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from ltd.clock import WallClock
from ltd.errors import ConfigError, PromptError
from ltd.pair import Pair
from ltd.runners import make_runner
from ltd.tree import DraftTree

_CYCLE_IDS = itertools.count()  # unique across engines: lets decision code cache per cycle state


@dataclass
class CycleResult:
    """What one cycle did."""

    new_tokens: list[int]  # accepted drafted tokens, then the target's own token
    accepted: int  # drafted tokens accepted
    depth: int
    width: int
    top_k: int
    tree_size: int
    draft_seconds: float
    verify_seconds: float
    draft_inputs: list[int] = field(default_factory=list)  # tokens the draft read at each expansion
    context: int = 0  # tokens before the cycle (the target's cached prefix + the root)
    after_draft: bool = False  # the previous cycle of this sequence drafted (the target's caches are cold)

    @property
    def seconds(self) -> float:
        return self.draft_seconds + self.verify_seconds


@dataclass
class History:
    """What recent cycles did, for the features of the next decisions."""

    accept_ema: float = 0.0
    accept_last: int = 0
    depth_last: int = 0
    width_last: int = 0

    def update(self, r: CycleResult, alpha: float = 0.3) -> None:
        self.accept_ema = (1 - alpha) * self.accept_ema + alpha * r.accepted
        self.accept_last, self.depth_last, self.width_last = r.accepted, r.depth, r.width


class SpecEngine:
    """Tree speculative decoding over one :class:`~ltd.pair.Pair`, batch size one."""

    @property
    def draft_vocab_size(self) -> int:
        """Columns of the draft's output layer in use (0: the full vocabulary)."""
        return 0 if self.draft_vocab is None else int(self.draft_vocab.numel())

    def __init__(self, pair: Pair, temperature: float = 0.0, seed: int | None = None, clock=None,
                 max_depth: int = 16, backend: str = "auto", draft_vocab: int | None = None, drafter: str = "ar"):
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.pair = pair
        self.device = pair.device
        self.temperature = float(temperature)
        self.clock = clock or WallClock(self.device)
        self.max_depth = max_depth
        self.max_context = min(pair.max_context, int(getattr(pair.draft.config, "max_position_embeddings", 1 << 30)))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        # The target also holds the (max_depth*top_k^2 sized) tree beyond the context while verifying.
        self.target = make_runner(pair.target, self.max_context + 1024, backend)
        self.draft = make_runner(pair.draft, self.max_context + 1024, backend)
        self.draft_vocab: torch.Tensor | None = None
        if draft_vocab is None:  # unspecified: the pair's recorded runtime default; 0 = the full vocabulary
            draft_vocab = pair.meta.get("runtime", {}).get("draft_vocab")
        if draft_vocab:
            ranking = pair.meta.get("token_ranking")
            if not ranking:
                raise ConfigError(f"pair {pair.name} has no token ranking in pair.json: draft_vocab needs one")
            self.draft_vocab = torch.tensor(ranking[:draft_vocab], device=self.device)
            self.draft.restrict_vocab(self.draft_vocab)
        self.drafter_kind = drafter
        self.block = None
        if drafter == "block":
            self._init_block(backend)
        elif drafter != "ar":
            raise ConfigError(f"unknown drafter {drafter!r}: choose ar (the draft model) or block")
        self.tokens: list[int] = []
        self.tree: DraftTree | None = None
        self.cycle_id = -1
        self.history = History()

    def _init_block(self, backend: str) -> None:
        """The pair's block drafter, and a buffer of the target's layer features per committed position."""
        from ltd.block_drafter import BlockDrafter, drafter_folder

        target = self.pair.target
        self.block = BlockDrafter.load(drafter_folder(self.pair), self.device, target.dtype)
        self.target.capture_layers(self.block.config.target_layers)
        head = target.get_output_embeddings().weight
        self.block_head = head if self.draft_vocab is None else head[self.draft_vocab].contiguous()
        self.block_embed = target.get_input_embeddings().weight
        c = self.block.config
        self.feats = torch.zeros(self.max_context + 1, len(c.target_layers), c.target_hidden, dtype=target.dtype,
                                 device=self.device)
        self.block_logits: torch.Tensor | None = None
        self.block_forwards = 0  # drafter calls (one per drafted cycle, whatever the block length)

    # ------------------------------------------------------------------ sequence

    def reset(self, prompt_ids: list[int]) -> None:
        """Start a new sequence: prefill the target with all of the prompt but its last token."""
        if len(prompt_ids) == 0:
            raise PromptError("empty prompt: give at least one token")
        if len(prompt_ids) >= self.max_context:
            raise PromptError(f"prompt of {len(prompt_ids)} tokens does not fit the model's context of "
                              f"{self.max_context}: shorten the prompt")
        self.tokens = list(prompt_ids)
        self.target.reset()
        self.draft.reset()
        self.draft_len = 0
        self.tree = None
        self.history = History()
        self.cycle_draft_seconds = 0.0
        self.cycle_draft_inputs = []
        if len(prompt_ids) > 1:
            with torch.inference_mode():
                self.target.forward(torch.tensor(prompt_ids[:-1], device=self.device), rows="last")
                if self.block is not None:
                    self.feats[: len(prompt_ids) - 1] = self.target.captured

    @property
    def room(self) -> int:
        """New tokens that still fit the context."""
        return self.max_context - len(self.tokens)

    # ------------------------------------------------------------------ cycle steps

    def begin(self, top_k: int) -> None:
        """Open a cycle with an empty tree whose expansions keep ``top_k`` nodes."""
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        self.tree = DraftTree(top_k, self.device, self.draft_vocab)
        self.cycle_id = next(_CYCLE_IDS)
        self.cycle_draft_seconds = 0.0
        self.cycle_draft_inputs: list[int] = []

    def can_expand(self) -> bool:
        tree = self.tree
        limit = self.max_depth if self.block is None else min(self.max_depth, self.block.config.block)
        return tree is not None and tree.depth < limit and len(self.tokens) + tree.depth + 1 < self.max_context

    def _visible(self, tree_part: torch.Tensor, prefix: int) -> torch.Tensor:
        """Bool mask [q, prefix + kv]: all of the prefix, then the tree part [q, kv]."""
        q = tree_part.shape[0]  # built where the tree lives: no round trip through the host on a GPU
        return torch.cat([torch.ones(q, prefix, dtype=torch.bool, device=tree_part.device), tree_part], dim=1)

    @torch.inference_mode()
    def expand(self) -> None:
        """One draft forward: the root's children first, then the frontier's."""
        tree = self.tree
        if tree is None:
            raise RuntimeError("begin() a cycle before expand()")
        if not self.can_expand():
            raise RuntimeError("no room to expand: check can_expand()")
        t0 = self.clock.now()
        if self.block is not None:
            self._expand_block(tree)
            self.cycle_draft_seconds += self.clock.now() - t0
            return
        draft = self.draft
        if tree.depth == 0:
            # the draft reads what it has not seen; at least the root (a cycle may be re-begun)
            start = min(self.draft_len, len(self.tokens) - 1)
            draft.truncate(start)
            ids = torch.tensor(self.tokens[start:], device=self.device)
            self.cycle_draft_inputs.append(int(ids.numel()))
            logits = draft.forward(ids, rows="last")
            self.draft_len = len(self.tokens)
            tree.add_root_children(logits[-1])
        else:
            tokens, visible = tree.feed_frontier()
            self.cycle_draft_inputs.append(int(tokens.numel()))
            pos = torch.full((tokens.numel(),), self.draft_len - 1 + tree.depth, device=self.device)
            logits = draft.forward(tokens, pos, self._visible(visible, self.draft_len))
            tree.add_children(logits)
        self.cycle_draft_seconds += self.clock.now() - t0

    def _expand_block(self, tree: DraftTree) -> None:
        """Block drafter: one forward at the first expansion; later ones read its next position."""
        if tree.depth == 0:
            c = self.block.config
            n = len(self.tokens) - 1  # committed positions with target features
            ctx = self.feats[max(0, n - c.context): n]
            keep = None
            if ctx.shape[0] < c.context:  # a short prompt: pad the oldest rows and hide them
                pad = c.context - ctx.shape[0]
                ctx = torch.cat([ctx.new_zeros(pad, *ctx.shape[1:]), ctx])
                keep = torch.ones(1, c.context + c.block, dtype=torch.bool, device=self.device)
                keep[0, :pad] = False
            root = self.block_embed[self.tokens[-1]]
            self.block_logits = self.block(ctx[None], root[None], self.block_head, keep)[0]  # [B, V]
            self.block_forwards += 1
            self.cycle_draft_inputs.append(int(c.context + c.block))
            tree.add_root_children(self.block_logits[0])
        else:
            row = self.block_logits[tree.depth]
            tree.add_children(row[None].expand(len(tree.frontier), -1), feed=False)

    @torch.inference_mode()
    def target_pass(self, width: int) -> tuple[torch.Tensor, list[int], list[int]]:
        """The target's one pass over the root and the best ``width`` nodes.

        Returns (logits [w + 1, V], node tokens [w], local parents [w + 1]); row 0 is the root.
        Appends w + 1 positions to the target's cache; :meth:`verify` keeps only the accepted ones.
        """
        tree = self.tree
        prefix = len(self.tokens) - 1
        if tree is not None and len(tree) and width > 0:
            layout = tree.verify_layout(width)
            ids = torch.tensor([self.tokens[-1], *layout.tokens], device=self.device)
            pos = torch.tensor([prefix + d for d in layout.depths], device=self.device)
            q = len(layout.depths)
            mask = np.ones((q, prefix + q), dtype=bool)  # all of the prefix, then the tree's ancestors
            mask[:, prefix:] = layout.ancestors
            logits = self.target.forward(ids, pos, torch.from_numpy(mask).to(self.device))
            return logits, layout.tokens, layout.parents
        return self.target.forward(torch.tensor([self.tokens[-1]], device=self.device)), [], [-1]

    @torch.inference_mode()
    def peek(self) -> tuple[list[int], list[int]]:
        """The target's greedy token after the root and after every tree node, without committing.

        One tree-masked pass over the whole tree; its cache entries are dropped again, so the
        engine is as before the pass (the tree stays). Returns (choices [n + 1], node tokens [n]):
        ``choices[0]`` follows the root, ``choices[i + 1]`` node ``i``. A node's logits depend
        only on its ancestors, so these are the choices any subset of the tree would get.
        """
        prefix = len(self.tokens) - 1
        logits, node_tokens, _ = self.target_pass(len(self.tree) if self.tree is not None else 0)
        self.target.truncate(prefix)
        return logits.argmax(-1).tolist(), node_tokens

    @torch.inference_mode()
    def verify(self, width: int) -> CycleResult:
        """Verify the best ``width`` nodes in one target pass, accept, and commit the result."""
        tree = self.tree if self.tree is not None else DraftTree(1, self.device)
        t0 = self.clock.now()
        prefix = len(self.tokens) - 1
        logits, node_tokens, parents = self.target_pass(width)
        w = len(node_tokens)

        children: dict[int, dict[int, int]] = {}
        for i in range(1, w + 1):
            children.setdefault(parents[i], {})[node_tokens[i - 1]] = i
        path: list[int] = []
        cur = 0
        if self.temperature == 0.0:
            choice = logits.argmax(-1).tolist()
            while True:
                nxt = children.get(cur, {}).get(choice[cur])
                if nxt is None:
                    bonus = choice[cur]
                    break
                path.append(nxt)
                cur = nxt
        else:
            while True:
                probs = torch.softmax(logits[cur].float() / self.temperature, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=self.generator))
                nxt = children.get(cur, {}).get(tok)
                if nxt is None:
                    bonus = tok
                    break
                path.append(nxt)
                cur = nxt

        self.target.keep_prefix_and(prefix + 1, [prefix + i for i in path])
        if self.block is not None:  # the target's features of the root and the accepted nodes
            self.feats[prefix: prefix + 1 + len(path)] = self.target.captured[[0, *path]]
        new_tokens = [node_tokens[i - 1] for i in path] + [bonus]
        self.tokens.extend(new_tokens)
        depth = tree.depth
        self.tree = None
        t1 = self.clock.now()
        inputs = self.cycle_draft_inputs if depth else []
        result = CycleResult(new_tokens, len(path), depth, w, tree.top_k, len(tree),
                             self.cycle_draft_seconds if depth else 0.0, t1 - t0, list(inputs), prefix + 1,
                             self.history.depth_last > 0)
        self.history.update(result)
        return result
