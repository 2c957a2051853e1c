"""External baselines: transformers' own ``generate``, plain and with assisted generation.

``hf_ar`` is the target's ``generate`` without a draft; ``hf_heuristic`` and ``hf_confidence`` are
transformers' assisted generation (``assistant_model=`` the pair's draft), with the two schedules
it ships:

* ``heuristic``: start at 20 draft tokens, +2 after a fully accepted draft, -1 otherwise;
* ``confidence`` (transformers' default): up to 20 draft tokens, stopping when the draft's top
  probability falls below ``assistant_confidence_threshold`` (0.4; transformers retunes it
  during a generation only when scikit-learn is installed).

Each call starts from a fresh copy of these settings (transformers copies the assistant's
generation config per call), so every prompt starts alike. ``cycles`` counts the target's forward
calls, so tokens per cycle is comparable with the engine's.
"""

from __future__ import annotations

import copy

import torch

from ltd.pair import Pair
from ltd.runtime import Generation

SCHEDULES = {
    "heuristic": {"num_assistant_tokens_schedule": "heuristic", "num_assistant_tokens": 20,
                  "assistant_confidence_threshold": 0.0},
    "confidence": {"num_assistant_tokens_schedule": "constant", "num_assistant_tokens": 20,
                   "assistant_confidence_threshold": 0.4},
}


@torch.inference_mode()
def hf_generate(pair: Pair, prompt_ids: list[int], max_new_tokens: int, clock, schedule: str | None = None) -> Generation:
    """Greedy ``pair.target.generate``, with the draft as assistant when ``schedule`` is given."""
    target, draft = pair.target, pair.draft
    ids = torch.tensor([prompt_ids], device=pair.device)
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "attention_mask": torch.ones_like(ids),
              "eos_token_id": pair.eos_token_id, "pad_token_id": pair.tokenizer.pad_token_id or pair.eos_token_id,
              "temperature": None, "top_p": None, "top_k": None}
    saved = draft.generation_config
    if schedule is not None:
        draft.generation_config = copy.deepcopy(saved)
        for key, value in SCHEDULES[schedule].items():
            setattr(draft.generation_config, key, value)
        kwargs["assistant_model"] = draft
    calls = [0]
    hook = target.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        t0 = clock.now()
        out = target.generate(ids, **kwargs)
        seconds = clock.now() - t0
    finally:
        hook.remove()
        draft.generation_config = saved
    new = out[0, len(prompt_ids):].tolist()
    return Generation(list(prompt_ids), new, pair.tokenizer.decode(new), calls[0], seconds, 0.0, seconds)
