"""Figures without pyplot state: a standalone Figure on an Agg canvas (no display needed), saved atomically as PNG."""

from __future__ import annotations

from pathlib import Path

from cache.atomic import atomic_path


def new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` × ``height`` inches on its own Agg canvas."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig`` and write it to ``path`` as PNG (temp file + rename); returns the path."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
