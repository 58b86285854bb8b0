"""Report figures as PNG files, drawn on Agg canvases without pyplot's global state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

DPI = 90
PNG_METADATA = {"Software": None}
MAX_BAR_RUNS = 6


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG without the matplotlib version stamp (stable bytes)."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    return path


def confusion_png(counts: np.ndarray, normalised: np.ndarray, class_names: tuple[str, ...],
                  title: str, path: Path) -> Path:
    """Counts and row-normalised confusion matrices side by side, as annotated heatmaps."""
    fig = Figure(figsize=(10, 4.8))
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.86, wspace=0.2)
    for ax, values, fmt, label in ((axes[0], counts, "d", "counts"),
                                   (axes[1], normalised, ".2f", "row-normalised (recall)")):
        ax.imshow(values, cmap="Blues", vmin=0)
        threshold = values.max() / 2 if values.size else 0
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                    color="white" if v > threshold else "black")
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label)
    fig.suptitle(title)
    return save(fig, path)


def recall_bars_png(recalls: np.ndarray, run_names: list[str], class_names: tuple[str, ...],
                    path: Path, title: str = "Per-class recall by run") -> Path:
    """Per-class recall of every run as grouped bars (one group per class)."""
    n_runs, n_classes = recalls.shape
    legend_rows = -(-n_runs // 4)
    width, height = min(14.0, 7.0 + 0.5 * n_runs), 3.6 + 0.25 * legend_rows
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.7 / width, right=0.98, bottom=(0.5 + 0.25 * legend_rows) / height,
                        top=1 - 0.4 / height)
    bar = 0.8 / n_runs
    x = np.arange(n_classes)
    for r, name in enumerate(run_names):
        ax.bar(x + (r - (n_runs - 1) / 2) * bar, recalls[r], bar, label=shorten(name))
    ax.set_xticks(x, class_names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="lower center", ncols=min(n_runs, 4), fontsize=8, frameon=False)
    ax.set_title(title)
    return save(fig, path)


def recall_png(recalls: np.ndarray, run_names: list[str], class_names: tuple[str, ...],
               path: Path, title: str = "Per-class recall by run") -> Path:
    """Grouped bars for up to MAX_BAR_RUNS runs, a runs x classes heatmap beyond that."""
    if len(run_names) > MAX_BAR_RUNS:
        return heatmap_png(recalls, run_names, class_names, path, title, vmin=0, vmax=1)
    return recall_bars_png(recalls, run_names, class_names, path, title)


def heatmap_png(values: np.ndarray, row_names: list[str], column_names, path: Path,
                title: str, vmin: float | None = None, vmax: float | None = None,
                annotate: bool = True) -> Path:
    """An annotated heatmap, one row per run; its height grows with the number of rows."""
    n_rows, n_cols = values.shape
    label_width = 0.075 * max(len(shorten(n)) for n in row_names) + 0.3
    width = min(13.0, label_width + 0.8 + 0.75 * n_cols)
    height = 1.6 + 0.28 * n_rows
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=label_width / width, right=1 - 0.8 / width, bottom=1.0 / height,
                        top=1 - 0.5 / height)
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    if annotate:
        mid = np.nanmean(values) if np.isfinite(values).any() else 0
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > mid else "white")
    ax.set_xticks(range(n_cols), [shorten(str(c), 16) for c in column_names], rotation=30,
                  ha="right")
    ax.set_yticks(range(n_rows), [shorten(n) for n in row_names], fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    ax.set_title(title)
    return save(fig, path)


def reliability_png(curves: list[dict], run_names: list[str], path: Path) -> Path:
    """Reliability diagram per run: accuracy vs mean confidence per bin, against the diagonal."""
    n = len(curves)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    width, height = 3.2 * ncols, 3.4 * nrows
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.subplots_adjust(left=0.6 / width, right=0.97, bottom=0.5 / height,
                        top=1 - 0.5 / height, wspace=0.4, hspace=1.2 / 3.4)
    for ax, curve, name in zip(axes, curves, run_names, strict=False):
        edges = np.asarray(curve["edges"])
        acc = np.array([np.nan if a is None else a for a in curve["accuracy"]])
        ax.bar(edges[:-1], np.nan_to_num(acc), width=np.diff(edges), align="edge",
               edgecolor="black", linewidth=0.4, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{shorten(name)}\nECE {curve['ece']:.3f}", fontsize=9)
    for ax in axes[n:]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7, loc="upper left")
    return save(fig, path)


def curves_png(curves: list[dict], path: Path, title: str = "Training curves") -> Path:
    """Val accuracy (left, a dot on the best epoch) and train / val loss (right, solid /
    dashed) against the epoch, one colour per run; a column a run lacks is left out."""
    n = len(curves)
    legend_rows = -(-n // 3)
    width, height = 12.0, 4.0 + 0.25 * legend_rows
    fig = Figure(figsize=(width, height))
    acc_ax, loss_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.6 / width, right=0.98, bottom=(0.6 + 0.2 * legend_rows) / height,
                        top=1 - 0.55 / height, wspace=0.18)
    colours = colormaps["tab20"]
    for i, curve in enumerate(curves):
        colour = colours((2 * i) % 20 + (2 * i) // 20)  # the ten dark hues, then the light
        epochs = np.asarray(curve["epoch"])
        if "val_accuracy" in curve:
            acc_ax.plot(epochs, np.array(curve["val_accuracy"], dtype=float), color=colour,
                        linewidth=1.2, label=shorten(curve["name"]))
        else:  # keep the run in the legend
            acc_ax.plot([], [], color=colour, label=shorten(curve["name"]))
        if curve.get("best_epoch") is not None:
            acc_ax.plot([curve["best_epoch"]], [curve["best_val_accuracy"]], "o", color=colour,
                        markersize=4)
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in curve:
                loss_ax.plot(epochs, np.array(curve[column], dtype=float), style, color=colour,
                             linewidth=1.0)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("val accuracy")
    acc_ax.set_title("Validation accuracy (dot: best epoch)", fontsize=10)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss", fontsize=10)
    loss_ax.legend(handles=[Line2D([], [], color="black", linestyle="-", label="train"),
                            Line2D([], [], color="black", linestyle="--", label="val")],
                   fontsize=8, loc="upper right")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncols=min(n, 3), fontsize=8, frameon=False)
    fig.suptitle(title)
    return save(fig, path)


def face_grid_png(rows: list[list[np.ndarray]], path: Path, scale: int = 2) -> Path:
    """Faces tiled row by row (no text: the report's tables caption them in the same order)."""
    ncols = max(len(faces) for faces in rows)
    side = next(len(face) for faces in rows for face in faces)
    cell = side + 4
    canvas = np.full((cell * len(rows) + 4, cell * ncols + 4), 255, dtype=np.uint8)
    for r, faces in enumerate(rows):
        for c, face in enumerate(faces):
            canvas[4 + r * cell:4 + r * cell + side, 4 + c * cell:4 + c * cell + side] = face
    big = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
    Image.fromarray(big).save(path)
    return path


def shorten(name: str, limit: int = 40) -> str:
    """A run name cut to fit a plot title or legend."""
    return name if len(name) <= limit else name[: limit - 1] + "…"
