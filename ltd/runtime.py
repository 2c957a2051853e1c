"""The decoding runtime: ``generate(pair, prompt, controller)``.

The same :func:`run_cycle` drives every cycle here, in training environments and in benchmarks.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ltd.controllers import Controller, StaticController
from ltd.engine import CycleResult, SpecEngine
from ltd.errors import PromptError
from ltd.pair import Pair, load_pair
from ltd.paths import read_text


def draft(engine: SpecEngine, controller: Controller) -> None:
    """Open a cycle and expand the tree for as long as ``controller`` wants and the engine can."""
    engine.begin(controller.choose_top_k(engine))
    while engine.can_expand() and controller.should_expand(engine):
        engine.expand()


def run_cycle(engine: SpecEngine, controller: Controller) -> CycleResult:
    """One draft-and-verify cycle, shaped by ``controller``."""
    draft(engine, controller)
    return engine.verify(controller.choose_width(engine))


@dataclass
class Generation:
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    cycles: int
    seconds: float
    draft_seconds: float
    verify_seconds: float
    accepted: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return len(self.output_ids) / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted(self) -> float:
        """Tokens gained per cycle (accepted drafted tokens + the target's own)."""
        return len(self.output_ids) / self.cycles if self.cycles else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("accepted")
        d.update(tokens_per_s=round(self.tokens_per_s, 3), mean_accepted=round(self.mean_accepted, 4))
        return d


def generate_ids(engine: SpecEngine, prompt_ids: list[int], controller: Controller, max_new_tokens: int = 128,
                 stop_tokens: set[int] | None = None) -> Generation:
    """Decode from ``prompt_ids`` until a stop token (default: EOS), ``max_new_tokens`` or the end of the context.

    A stop token ends the output and is part of it, as in transformers' ``generate``.
    """
    pair = engine.pair
    stops = stop_tokens if stop_tokens is not None else {pair.eos_token_id} - {None}
    clock = engine.clock
    t0 = clock.now()
    engine.reset(prompt_ids)
    out: list[int] = []
    cycles, draft_s, verify_s, accepted = 0, 0.0, 0.0, []
    done = max_new_tokens <= 0
    while not done and engine.room > 0:
        r = run_cycle(engine, controller)
        cycles += 1
        draft_s += r.draft_seconds
        verify_s += r.verify_seconds
        accepted.append(r.accepted)
        for tok in r.new_tokens:
            out.append(tok)
            if tok in stops or len(out) >= max_new_tokens:
                done = True
                break
    seconds = clock.now() - t0
    text = pair.tokenizer.decode(out, skip_special_tokens=True)
    return Generation(list(prompt_ids), out, text, cycles, seconds, draft_s, verify_s, accepted)


def generate(pair: Pair | str, prompt: str | list[int], controller: Controller | None = None, *,
             depth: int = 3, top_k: int = 4, width: int = 8, max_new_tokens: int = 128, temperature: float = 0.0,
             seed: int | None = None, engine: SpecEngine | None = None) -> Generation:
    """Generate a continuation of ``prompt`` with speculative decoding.

    ``pair`` is a loaded :class:`Pair` or a spec (``"tiny"``, ``"target=PATH,draft=PATH"``).
    Without a ``controller``, a static tree of ``depth`` expansions of ``top_k`` nodes with the best
    ``width`` nodes verified is used. The text is the target's own (greedy, or sampled with
    ``temperature``): the draft and the controller change only the speed.
    """
    if isinstance(pair, str):
        pair = load_pair(pair)
    if isinstance(prompt, str):
        if not prompt:
            raise PromptError("empty prompt: give some text to continue")
        prompt_ids = pair.encode(prompt)
    else:
        prompt_ids = list(prompt)
    controller = controller or StaticController(depth=depth, top_k=top_k, width=width)
    engine = engine or SpecEngine(pair, temperature=temperature, seed=seed)
    return generate_ids(engine, prompt_ids, controller, max_new_tokens=max_new_tokens)


SPEC_BENCH = Path(__file__).resolve().parent / "assets" / "data" / "spec_bench" / "question.jsonl"


def read_spec_bench(category: str | None = None) -> list[str]:
    """First turns of the vendored Spec-Bench questions, optionally of one category.

    All categories come interleaved (one question of each in turn), so any prefix of the list
    samples every category.
    """
    rows = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]
    cats = sorted({r["category"] for r in rows})
    if category is not None and category not in cats:
        raise PromptError(f"unknown Spec-Bench category {category!r}: choose one of {', '.join(cats)}")
    if category is not None:
        return [r["turns"][0] for r in rows if r["category"] == category]
    by_cat = [[r["turns"][0] for r in rows if r["category"] == c] for c in cats]
    return [q for group in itertools.zip_longest(*by_cat) for q in group if q is not None]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSON-lines file (``{"prompt": ...}`` or Spec-Bench's ``{"turns": [...]}``),
    or ``specbench`` / ``specbench:CATEGORY`` for the vendored Spec-Bench questions."""
    if isinstance(path, str) and (path == "specbench" or path.startswith("specbench:")):
        return read_spec_bench(path.partition(":")[2] or None)
    path = Path(path)
    lines = read_text(path, "prompt file", PromptError,
                      'give a JSON-lines file with one {"prompt": ...} per line').splitlines()
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise PromptError(f"{path}:{n} is not JSON: write one {{\"prompt\": ...}} object per line")
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            text = obj["prompt"]
        elif isinstance(obj, dict) and isinstance(obj.get("turns"), list) and obj["turns"] and isinstance(obj["turns"][0], str):
            text = obj["turns"][0]
        else:
            raise PromptError(f"{path}:{n} has no \"prompt\" string: write one {{\"prompt\": ...}} object per line")
        if not text:
            raise PromptError(f"{path}:{n} has an empty prompt: remove the line or give it text")
        prompts.append(text)
    if not prompts:
        raise PromptError(f"prompt file {path} holds no prompts: add {{\"prompt\": ...}} lines")
    return prompts
