"""Matplotlib for report files: the non-interactive backend, imported only when a plot is drawn."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
