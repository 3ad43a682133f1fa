"""Figures for MLflow artifacts: matplotlib's object API on the Agg canvas (no display,
no pyplot global state, safe in Ray workers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(figsize: tuple[float, float]) -> Any:
    """A new Figure drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path, dpi: int = 100, title: str = "") -> Path:
    """Title (if any), tight layout, write the PNG; returns the path."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return Path(path)
