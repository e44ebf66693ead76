"""The run folder's pictures: learning curves and the validation confusion matrix.

Drawn on bare matplotlib Figures with the Agg canvas (no pyplot, no global backend state), so they
work headless, in DDP workers and next to other threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)


def draw_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and val, side by side.

    ``history`` holds one dict per epoch with ``epoch`` and any of ``train_loss``, ``val_loss``,
    ``train_acc``, ``val_acc`` (missing or None values are skipped).
    """
    fig = Figure(figsize=(10, 4))
    for ax, metric, title in (
        (fig.add_subplot(1, 2, 1), "loss", "Loss"),
        (fig.add_subplot(1, 2, 2), "acc", "Accuracy"),
    ):
        for stage, style in (("train", "o-"), ("val", "s-")):
            points = [
                (h["epoch"] + 1, h[f"{stage}_{metric}"])
                for h in history
                if h.get(f"{stage}_{metric}") is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=stage, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if metric == "acc":
            ax.set_ylim(-0.02, 1.02)
        if ax.has_data():
            ax.legend()
    return _save(fig, path)


def draw_confusion(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Validation confusion matrix",
) -> Path:
    """Counts with rows = true class and columns = predicted class, shaded by row share."""
    n = len(class_names)
    rows = [list(r) for r in matrix]
    share = [[v / max(1, sum(r)) for v in r] for r in rows]
    side = max(4.0, 0.45 * n + 2.5)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:  # beyond that the numbers are unreadable; the shading still tells the story
        for i, row in enumerate(rows):
            for j, count in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i][j] > 0.5 else "black",
                )
    return _save(fig, path)
