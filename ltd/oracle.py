"""The hindsight oracle: per cycle, the depth and width that would have given the highest throughput.

Before each cycle the oracle drafts the deepest tree the engine allows, asks the target for its
greedy token after every node in one pass (:meth:`~ltd.engine.SpecEngine.peek`, which leaves the
caches as they were), and works out for every (depth, width) how many drafted tokens would have
been accepted. A tree of depth ``d`` is the first ``d`` expansions of the deepest one (expansion is
deterministic), and a node's target token depends only on its ancestors, so this is exact. Each
candidate's cost comes from the pair's cost model; the oracle then runs the best cycle for real.

Timing: the search drafts deep trees and runs wide target passes, which would leave the real
cycles after it with cold caches. So :func:`oracle_generate` decodes twice: once searching (and
recording each cycle's plan), then again replaying the plans with nothing between the cycles,
and only the replay is timed. Greedy decoding is deterministic, so the replay meets exactly the
states the plans were made for. The result bounds from above any controller of the same engine,
drafter and top_k that decides cycle by cycle, as far as the cost model ranks cycles as the wall
clock does. Greedy only (under sampling, acceptance is random).
"""

from __future__ import annotations

from ltd.clock import CostModel
from ltd.engine import SpecEngine
from ltd.runtime import Generation, generate_ids

DEFAULT_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def accepted_by(choices: list[int], tokens: list[int], parents: list[int], chosen: list[int]) -> int:
    """Drafted tokens the target accepts when it verifies the tree nodes ``chosen`` (greedy)."""
    children: dict[int, dict[int, int]] = {}
    for i in chosen:
        children.setdefault(parents[i], {})[tokens[i]] = i
    n, cur = 0, -1
    while True:
        nxt = children.get(cur, {}).get(choices[cur + 1])
        if nxt is None:
            return n
        n, cur = n + 1, nxt


class HindsightOracle:
    """A controller that searches every (depth, width) of the coming cycle before choosing."""

    label = "hindsight"

    def __init__(self, cost: CostModel, top_k: int, max_depth: int, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        self.cost = cost
        self.top_k = top_k
        self.max_depth = max_depth
        self.widths = tuple(sorted(set(widths)))
        self.plan = (0, 0)
        self.expected = 1  # tokens the chosen plan gains (accepted + the target's own)
        self.plans: list[tuple[int, int]] = []  # every plan made, in order (for a replay)

    def choose_top_k(self, engine: SpecEngine) -> int:
        self.plan = self.search(engine)
        self.plans.append(self.plan)
        return self.top_k

    def should_expand(self, engine: SpecEngine) -> bool:
        return engine.tree.depth < self.plan[0]

    def choose_width(self, engine: SpecEngine) -> int:
        return self.plan[1]

    def search(self, engine: SpecEngine) -> tuple[int, int]:
        """The (depth, width) of the highest tokens per modelled second for the coming cycle."""
        if engine.temperature > 0:
            raise ValueError("the hindsight oracle is defined for greedy decoding only")
        m, context = self.cost, len(engine.tokens)
        best, plan = 1.0 / sum(m.predict([], 0, context, engine.history.depth_last > 0)), (0, 0)
        self.expected = 1
        draft_len = engine.draft_len
        engine.begin(self.top_k)
        sizes = [0]
        while engine.tree.depth < self.max_depth and engine.can_expand():
            engine.expand()
            sizes.append(len(engine.tree))
        if len(sizes) == 1:
            return plan
        tree = engine.tree
        inputs = list(engine.cycle_draft_inputs)
        choices, tokens = engine.peek()
        engine.draft_len = draft_len  # the real cycle reads what it would have read without the search
        scores, parents = tree.scores.tolist(), tree.parents.tolist()
        for d in range(1, len(sizes)):
            order = sorted(range(sizes[d]), key=lambda i: -scores[i])  # stable: ties to the older node, as select()
            for w in self.widths:
                if w > sizes[d]:
                    break
                gained = accepted_by(choices, tokens, parents, order[:w]) + 1
                rate = gained / sum(m.predict(inputs[:d], w, context))
                if rate > best:
                    best, plan, self.expected = rate, (d, w), gained
        return plan


class Replay:
    """A controller that replays recorded (depth, width) plans, one per cycle."""

    def __init__(self, plans: list[tuple[int, int]], top_k: int):
        self.plans = list(plans)
        self.top_k = top_k
        self.plan = (0, 0)

    def choose_top_k(self, engine: SpecEngine) -> int:
        self.plan = self.plans.pop(0)
        return self.top_k

    def should_expand(self, engine: SpecEngine) -> bool:
        return engine.tree.depth < self.plan[0]

    def choose_width(self, engine: SpecEngine) -> int:
        return self.plan[1]


def oracle_generate(engine: SpecEngine, oracle: HindsightOracle, prompt_ids: list[int],
                    max_new_tokens: int) -> Generation:
    """Generate with the oracle's plans: searched in a first pass, replayed and timed in a second."""
    oracle.plans = []
    searched = generate_ids(engine, prompt_ids, oracle, max_new_tokens=max_new_tokens)
    replayed = generate_ids(engine, prompt_ids, Replay(oracle.plans, oracle.top_k), max_new_tokens=max_new_tokens)
    if replayed.output_ids != searched.output_ids:
        raise RuntimeError("the oracle's replay decoded other tokens than its search: the engine is not deterministic")
    return replayed
