"""Reports: `report.json`, `report.md` (markdown tables) and PNG plots.

Plots use matplotlib's object API with the Agg canvas directly (no pyplot, no global backend
switch), so they work headless and never disturb a caller's own matplotlib state. Figures are
saved at their exact size (no 'tight' bounding box), so a plot's pixel size is predictable:
`size_in * dpi` for line plots, `cell_px` per grid cell for retrieval grids.
"""
from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

HIT, MISS = "#1a9850", "#d73027"


# ---------------------------------------------------------------- json and markdown

def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from tensors, numpy values, paths, tuples (NaN/inf become None)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_value(v: Any, precision: int = 2) -> str:
    """Table cell text: floats with `precision` decimals (tiny ones in 3 significant digits)."""
    v = to_jsonable(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if 0 < abs(v) < 10 ** -precision else f"{v:.{precision}f}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None,
                   precision: int = 2, row_header: str = "model") -> str:
    """One row per name, one column per metric (union in first-seen order when not given)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    lines = ["| " + " | ".join([row_header, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, r in rows.items():
        cells = [format_value(r[c], precision) if c in r else "" for c in columns]
        lines.append("| " + " | ".join([format_value(name), *cells]) + " |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, sections: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                 title: str = "Evaluation report", meta: Mapping[str, Any] | None = None,
                 plots: Mapping[str, str | Path] | None = None, precision: int = 2) -> dict[str, Path]:
    """Write `report.json` and `report.md` into out_dir; return their paths.

    sections: {section title: {row name (e.g. model): {metric: value}}}, e.g.
    {"retrieval: flickr30k test": {"ours": {"i2t_R@1": 91.2, ...}}}. meta: free key/values
    (checkpoint, data, date). plots: {caption: png path}, linked relative to out_dir.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_rel = {k: _relative(Path(p), out) for k, p in (plots or {}).items()}
    payload = {"title": title, "meta": to_jsonable(meta or {}), "sections": to_jsonable(sections), "plots": plot_rel}
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {format_value(v, precision)}" for k, v in (meta or {}).items()]
    for name, rows in sections.items():
        md += ["", f"## {name}", "", markdown_table(rows, precision=precision)]
    for caption, rel in plot_rel.items():
        md += ["", f"### {caption}", "", f"![{caption}]({rel})"]
    md_path.write_text("\n".join(md) + "\n")
    return {"json": json_path, "md": md_path}


def _relative(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------- plots

def _figure(width_in: float, height_in: float, dpi: int) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, format="png")
    return path


def plot_recall_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, *,
                       title: str = "", size_in: tuple[float, float] = (10, 4), dpi: int = 100) -> Path:
    """Recall@k for k = 1..K, image->text and text->image side by side, one line per model.

    curves: {model: {"i2t": [R@1, R@2, ...], "t2i": [...]}} in percent (`metrics.recall_curve`).
    """
    fig = _figure(*size_in, dpi)
    for ax, direction, label in zip(fig.subplots(1, 2), ("i2t", "t2i"), ("image -> text", "text -> image")):
        for model, c in curves.items():
            ys = list(c.get(direction, []))
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=model)
        ax.set(title=label, xlabel="k", ylabel="recall@k (%)", ylim=(0, 101))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_lines(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *, title: str = "",
               xlabel: str = "step", ylabel: str = "loss", logy: bool = False,
               size_in: tuple[float, float] = (7, 4), dpi: int = 100) -> Path:
    """Generic line plot of named (x, y) series, e.g. loss curves by run."""
    fig = _figure(*size_in, dpi)
    ax = fig.subplots()
    for name, pts in series.items():
        pts = list(pts)
        if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pts):
            raise ValueError(f"series {name!r} must be a list of (step, value) pairs, got {pts[:3]!r}...")
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(table: Mapping[str, Mapping[str, float]], path: str | Path, *, title: str = "",
              ylabel: str = "%", dpi: int = 100, height_in: float = 4.5) -> Path:
    """Grouped bars: one group per column (union in first-seen order), one bar per row (model).

    Width grows with the columns (0.9 in per column, at least 6 in); a missing value is no bar.
    """
    columns = list(dict.fromkeys(c for r in table.values() for c in r))
    fig = _figure(max(6.0, 0.9 * len(columns) + 1.5), height_in, dpi)
    ax = fig.subplots()
    n = max(len(table), 1)
    width = 0.8 / n
    for k, (model, row) in enumerate(table.items()):
        xs = [i + (k - (n - 1) / 2) * width for i, c in enumerate(columns) if row.get(c) is not None]
        ys = [row[c] for c in columns if row.get(c) is not None]
        ax.bar(xs, ys, width=width, label=model)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, ylim=(0, 100), title=title)
    ax.grid(axis="y", alpha=0.3)
    if table:
        ax.legend(fontsize=8)
    return _save(fig, path)


def wrap_caption(text: str, width: int = 28, max_lines: int = 5) -> str:
    """Wrap to `width` characters a line, at most `max_lines` lines (the last ends with '...' if cut)."""
    lines = textwrap.wrap(" ".join(str(text).split()), width=width, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width - 3, 0)].rstrip() + "..."
    return "\n".join(lines)


def to_image_array(img) -> np.ndarray:
    """PIL image, HWC/CHW/HW array or tensor -> an HWC (or HW) array matplotlib can show."""
    if hasattr(img, "convert") and hasattr(img, "size"):  # PIL: the one decoder (upright, scaled, alpha over white)
        from ..data.images import decode_image

        return np.asarray(decode_image(img).image)
    if hasattr(img, "detach"):  # torch
        img = img.detach().float().cpu().numpy()
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32), 0.0, 1.0)
    return a


def _mark(ax, ok: bool | None) -> None:
    for s in ax.spines.values():
        s.set_visible(ok is not None)
        if ok is not None:
            s.set_edgecolor(HIT if ok else MISS)
            s.set_linewidth(3)
    ax.set_xticks([])
    ax.set_yticks([])


def _text_cell(ax, text: str, ok: bool | None, fontsize: float) -> None:
    # DejaVu Sans averages ~0.6 em a character and matplotlib spaces lines ~1.3 em: size the wrap
    # to the axes' pixel box so the text fits; clip_on guards against fonts wider than that.
    fig = ax.figure
    box = ax.get_position()
    w_px, h_px = box.width * fig.get_figwidth() * fig.dpi, box.height * fig.get_figheight() * fig.dpi
    em_px = fontsize * fig.dpi / 72
    chars = max(8, int(0.88 * w_px / (0.6 * em_px)))
    lines = max(1, int(0.88 * h_px / (1.3 * em_px)))
    ax.text(0.04, 0.96, wrap_caption(text, chars, lines), va="top", ha="left", fontsize=fontsize,
            transform=ax.transAxes, family="DejaVu Sans", clip_on=True)
    _mark(ax, ok)


def _grid(n_rows: int, n_cols: int, path, cell_px: int, dpi: int, draw, title: str) -> Path:
    fig = Figure(figsize=(n_cols * cell_px / dpi, n_rows * cell_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99 if not title else 1 - 0.35 / n_rows,
                        wspace=0.05, hspace=0.08)
    for r in range(n_rows):
        for c in range(n_cols):
            draw(axes[r, c], r, c)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_text_to_image_grid(queries: Sequence[str], retrieved: Sequence[Sequence[Any]], path: str | Path, *,
                            correct: Sequence[Sequence[bool]] | None = None, title: str = "",
                            cell_px: int = 160, dpi: int = 100, fontsize: float = 7) -> Path:
    """One row per caption query: the caption, then its top-k images (green/red frame = hit/miss).

    Image size: ((1 + k) * cell_px, len(queries) * cell_px) pixels.
    """
    k = max((len(r) for r in retrieved), default=0)

    def draw(ax, r, c):
        if c == 0:
            _text_cell(ax, queries[r], None, fontsize)
        elif c - 1 < len(retrieved[r]):
            ax.imshow(to_image_array(retrieved[r][c - 1]), cmap="gray")
            _mark(ax, None if correct is None else bool(correct[r][c - 1]))
        else:
            ax.axis("off")

    return _grid(len(queries), 1 + k, path, cell_px, dpi, draw, title)


def plot_image_to_text_grid(query_images: Sequence[Any], retrieved: Sequence[Sequence[str]], path: str | Path, *,
                            correct: Sequence[Sequence[bool]] | None = None, title: str = "",
                            cell_px: int = 160, dpi: int = 100, fontsize: float = 7) -> Path:
    """One row per image query: the image, then its top-k captions (wrapped, truncated, framed).

    Image size: ((1 + k) * cell_px, len(query_images) * cell_px) pixels.
    """
    k = max((len(r) for r in retrieved), default=0)

    def draw(ax, r, c):
        if c == 0:
            ax.imshow(to_image_array(query_images[r]), cmap="gray")
            _mark(ax, None)
        elif c - 1 < len(retrieved[r]):
            _text_cell(ax, retrieved[r][c - 1], None if correct is None else bool(correct[r][c - 1]),
                       fontsize)
        else:
            ax.axis("off")

    return _grid(len(query_images), 1 + k, path, cell_px, dpi, draw, title)
