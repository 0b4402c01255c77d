"""Pictures people would rather look at than numbers: training curves and retrieval examples.

    plot_training_curves("runs/x", "runs/x/curves.png")
    plot_retrieval_examples([{"query": "...", "base": "a.png", "safe": "b.png", "base_unsafe": True,
                              "safe_unsafe": False}], "examples.png")

Every picture sits next to a machine-readable file of the numbers it shows (train_log.jsonl,
results.json); these functions only draw.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from safeclip.jsonl import read_jsonl


def new_figure(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True):
    """A figure and its ``rows x cols`` axes, drawn off-screen: a plain matplotlib ``Figure`` (not pyplot),
    so neither the caller's backend nor pyplot's figure list is touched."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=squeeze)


def save_figure(fig: Figure, out: str | os.PathLike) -> Path:
    """Lay out and write ``fig`` as PNG (creating the folder); PNG output uses matplotlib's Agg renderer."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_training_curves(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Per-term losses against steps (left) and the validation recall sum per epoch (right)."""
    run_dir = Path(run_dir)
    train_rows, val_rows = (read_jsonl(path) if path.is_file() else []
                            for path in (run_dir / "train_log.jsonl", run_dir / "val_log.jsonl"))
    fig, (left, right) = new_figure(1, 2, figsize=(11, 4))
    names = [k for k in (train_rows[0] if train_rows else {}) if k not in {"epoch", "step"}]
    steps = [r["step"] for r in train_rows]
    for name in names:
        left.plot(steps, [r[name] for r in train_rows], label=name, linewidth=2 if name == "total" else 1)
    left.set_xlabel("optimizer step")
    left.set_ylabel("loss term (unweighted; total weighted)")
    left.legend(fontsize=7)
    left.set_title("Safe-CLIP losses (Eq. 4-7)")
    right.plot([r["epoch"] for r in val_rows], [r["score"] for r in val_rows], marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel("validation recall sum")
    right.set_title("validation (Safe-CLIP protocol)")
    return save_figure(fig, out)


def plot_retrieval_examples(
    examples: list[dict], out: str | os.PathLike, *, title: str = "unsafe query -> top-1"
) -> Path:
    """Rows of (query, base top-1, Safe-CLIP top-1), as in the paper's Fig. 3.

    Each example is ``{"query": str | image path, "base": str | image path, "safe": str | image path,
    "base_unsafe": bool, "safe_unsafe": bool}``; texts are drawn as wrapped text, images as images,
    and a red/green frame marks whether the retrieved item is unsafe.
    """
    rows = len(examples)
    fig, axes = new_figure(rows, 3, figsize=(9, 1.9 * rows), squeeze=False)
    for col, heading in enumerate(("query (unsafe)", "base top-1", "Safe-CLIP top-1")):
        axes[0][col].set_title(heading, fontsize=10)
    for row, example in enumerate(examples):
        for col, key in enumerate(("query", "base", "safe")):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            value = example[key]
            if isinstance(value, (str, os.PathLike)) and Path(str(value)).suffix.lower() in {".png", ".jpg", ".jpeg"} and Path(str(value)).is_file():
                ax.imshow(Image.open(value).convert("RGB"))
            else:
                ax.text(0.02, 0.5, _wrap(str(value)), fontsize=7.5, va="center", ha="left", transform=ax.transAxes)
            if key != "query":
                colour = "#c0392b" if example[f"{key}_unsafe"] else "#27ae60"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
    fig.suptitle(title + "  (red frame: unsafe item retrieved, green: safe)", fontsize=10)
    return save_figure(fig, out)


def _wrap(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


def plot_radii(radii: dict[str, list[float]], out: str | os.PathLike, *, bounds: dict | None = None,
               title: str = "HySAC: distance to the origin") -> Path:
    """Histograms of the distance to the origin per group (e.g. safe / unsafe texts and images): HySAC's
    picture, safe content near the root and unsafe content farther out. ``bounds``: {label: radius} lines."""
    fig, ax = new_figure(1, 1, figsize=(6, 3.8))
    for label, values in radii.items():
        ax.hist(values, bins=30, alpha=0.5, label=label)
    for label, radius in (bounds or {}).items():
        ax.axvline(radius, linestyle="--", linewidth=1, color="black")
        ax.annotate(label, (radius, ax.get_ylim()[1] * 0.9), textcoords="offset points", xytext=(3, 0), fontsize=8)
    ax.set_xlabel("distance to the origin (hyperbolic)")
    ax.set_ylabel("items")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, out)
