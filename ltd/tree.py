"""The draft tree: pure tensor logic, no models.

Nodes are numbered in creation order, so a parent always has a smaller index than its children.
The root (the last accepted token, not yet verified by the target) is implicit, with index -1.

* ``add_root_children``: the first expansion, top_k children of the root.
* ``add_children``: later expansions, top_k children of each frontier node by cumulative
  log-probability; all k*k join the tree and the best top_k become the new frontier (EAGLE-2).
* ``select(width)``: the ``width`` best nodes by cumulative log-probability. A child's score is
  never above its parent's and ties go to the older node, so every chosen node's ancestors are
  chosen too.
* ``verify_layout``: input tokens, positions and the ancestor mask of the target's one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class VerifyLayout:
    """What one tree-masked target pass needs; index 0 is the root.

    Plain lists and a NumPy mask: the tree is tens of nodes, where each small torch op would cost
    more than the arithmetic (this runs once per cycle, inside the timed loop).
    """

    nodes: list[int]  # [w] global indices of the chosen nodes, ascending
    tokens: list[int]  # [w] their token ids
    depths: list[int]  # [w + 1] depth of root (0) and of each node
    parents: list[int]  # [w + 1] local parent index (-1 for the root)
    ancestors: np.ndarray  # [w + 1, w + 1] bool, row i sees column j


class DraftTree:
    """One cycle's draft tree, grown by expansions and read by verification."""

    def __init__(self, top_k: int, device: torch.device, vocab: torch.Tensor | None = None):
        self.top_k = top_k
        self.vocab = vocab  # token id of each draft logit column (None: column = token id)
        self.device = device
        self.tokens = torch.empty(0, dtype=torch.long, device=device)
        self.scores = torch.empty(0, dtype=torch.float32, device=device)
        self.parents = torch.empty(0, dtype=torch.long, device=device)
        self.node_depths = torch.empty(0, dtype=torch.long, device=device)
        self.frontier = torch.empty(0, dtype=torch.long, device=device)
        self.depth = 0
        self.fed = 0  # tree nodes the draft has read this cycle (its cache slots after the prefix)
        self.frontier_anc = torch.empty(0, 0, dtype=torch.bool, device=device)  # [f, fed]
        self._fed_rows = self.frontier_anc
        self.last_logits: torch.Tensor | None = None  # the draft's logits at the last expansion
        self.last_logp: torch.Tensor | None = None  # their top-k log-probabilities

    def __len__(self) -> int:
        return int(self.tokens.numel())

    @property
    def frontier_scores(self) -> torch.Tensor:
        return self.scores[self.frontier]

    def frontier_tokens(self) -> torch.Tensor:
        return self.tokens[self.frontier]

    def _append(self, tokens: torch.Tensor, scores: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        start = len(self)
        self.tokens = torch.cat([self.tokens, tokens])
        self.scores = torch.cat([self.scores, scores.float()])
        self.parents = torch.cat([self.parents, parents])
        self.node_depths = torch.cat([self.node_depths, torch.full_like(tokens, self.depth + 1)])
        self.depth += 1
        return torch.arange(start, start + tokens.numel(), device=self.device)

    def _top(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k log-probabilities and their columns, without normalising the whole row."""
        vals, cols = logits.topk(min(k, logits.shape[-1]), dim=-1)
        logp = vals.float() - torch.logsumexp(logits.float(), dim=-1, keepdim=True)
        self.last_logp = logp
        return logp, cols

    def add_root_children(self, root_logits: torch.Tensor) -> None:
        """First expansion: ``root_logits`` [V], the draft's logits after the root."""
        vals, toks = self._top(root_logits, self.top_k)
        if self.vocab is not None:
            toks = self.vocab[toks]
        idx = self._append(toks, vals, torch.full_like(toks, -1))
        self.frontier = idx
        self.frontier_anc = torch.zeros(idx.numel(), self.fed, dtype=torch.bool, device=self.device)
        self.last_logits = root_logits

    def add_children(self, frontier_logits: torch.Tensor, feed: bool = True) -> torch.Tensor:
        """Later expansion: ``frontier_logits`` [f, V], the draft's logits, one row per frontier node.

        Returns, for each new frontier node, the row of its parent in the old frontier. ``feed``:
        track which nodes an autoregressive draft has read (a block drafter reads none).
        """
        vals, toks = self._top(frontier_logits, self.top_k)  # [f, k]
        if self.vocab is not None:
            toks = self.vocab[toks]
        per_row = vals.shape[1]
        cum = self.frontier_scores[:, None] + vals  # [f, k]
        parents = self.frontier[:, None].expand_as(toks)
        idx = self._append(toks.reshape(-1), cum.reshape(-1), parents.reshape(-1))
        best = cum.reshape(-1).topk(min(self.top_k, cum.numel())).indices
        rows = best // per_row
        self.frontier = idx[best]
        if feed:
            self.frontier_anc = self._fed_rows[rows]
        self.last_logits = frontier_logits
        return rows

    def feed_frontier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The frontier as the draft's next input: (tokens [f], tree mask [f, fed + f]).

        Row i of the mask marks the tree slots node i may see: its ancestors and itself (the
        prefix is always visible and not part of this mask).
        """
        f = int(self.frontier.numel())
        mask = torch.cat([self.frontier_anc, torch.eye(f, dtype=torch.bool, device=self.device)], dim=1)
        self._fed_rows = mask
        self.fed += f
        return self.frontier_tokens(), mask

    def select(self, width: int) -> torch.Tensor:
        """Global indices of the ``width`` best nodes, ascending (parents before children)."""
        width = min(width, len(self))
        if width <= 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        order = torch.sort(self.scores, descending=True, stable=True).indices[:width]
        return order.sort().values

    def verify_layout(self, width: int) -> VerifyLayout:
        """The best ``width`` nodes (as :meth:`select`) laid out for the target's pass."""
        scores = self.scores.tolist()
        width = max(0, min(width, len(scores)))
        # sorted() stays stable with reverse=True: among equal scores the older node first, as select()
        nodes = sorted(sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:width])
        parents, tokens, depths = self.parents.tolist(), self.tokens.tolist(), self.node_depths.tolist()
        local = {g: i + 1 for i, g in enumerate(nodes)}
        local_parent = [-1] + [local[parents[g]] if parents[g] >= 0 else 0 for g in nodes]
        anc = np.zeros((width + 1, width + 1), dtype=bool)
        anc[:, 0] = True
        for i in range(1, width + 1):  # parents come first: a row is its parent's row plus itself
            anc[i] = anc[local_parent[i]]
            anc[i, i] = True
        return VerifyLayout(nodes, [tokens[g] for g in nodes], [0] + [depths[g] for g in nodes], local_parent, anc)
