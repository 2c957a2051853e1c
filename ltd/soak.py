"""Soak: generate many tokens over many prompts and watch resident memory.

A leak of KV caches or tensors between prompts shows as resident memory that keeps growing after
the first prompt (which pays for the allocator's pools, the caches' buffers and lazy imports).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
from tqdm.auto import tqdm

from ltd.controllers import Controller
from ltd.engine import SpecEngine
from ltd.runtime import generate_ids


@dataclass
class SoakReport:
    tokens: list[int]  # tokens generated so far, after each prompt
    rss_mb: list[float]  # resident memory after each prompt

    @property
    def growth(self) -> float:
        """Final resident memory over the level after the first prompt, minus one."""
        return self.rss_mb[-1] / self.rss_mb[0] - 1

    @property
    def peak_growth(self) -> float:
        return max(self.rss_mb) / self.rss_mb[0] - 1

    def to_json(self) -> dict:
        return {"prompts": len(self.tokens), "tokens": self.tokens[-1], "rss_after_first_mb": round(self.rss_mb[0], 1),
                "rss_final_mb": round(self.rss_mb[-1], 1), "rss_peak_mb": round(max(self.rss_mb), 1),
                "growth": round(self.growth, 4), "peak_growth": round(self.peak_growth, 4),
                "rss_mb": [round(r, 1) for r in self.rss_mb], "tokens_after": self.tokens}


def soak(engine: SpecEngine, prompts: list[list[int]], controller: Controller, tokens: int = 20_000,
         max_new_tokens: int = 128) -> SoakReport:
    """Cycle through ``prompts`` until ``tokens`` tokens are generated; resident memory after each prompt."""
    process = psutil.Process()
    made, after, rss = 0, [], []
    bar = tqdm(total=tokens, desc="soak", unit="tok")
    i = 0
    while made < tokens:
        g = generate_ids(engine, prompts[i % len(prompts)], controller, max_new_tokens=max_new_tokens)
        i += 1
        made += len(g.output_ids)
        bar.update(len(g.output_ids))
        after.append(made)
        rss.append(process.memory_info().rss / 2**20)
    bar.close()
    return SoakReport(after, rss)


def plot(report: SoakReport, path) -> None:
    from ltd.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(report.tokens, report.rss_mb, marker=".", lw=1)
    ax.axhline(report.rss_mb[0] * 1.1, color="tab:red", ls="--", lw=1, label="first prompt + 10 %")
    ax.set_xlabel("tokens generated")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
