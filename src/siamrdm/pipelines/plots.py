"""Figures a neuroscientist reads at a glance: RDM heatmaps, MDS with thumbnails, learning curves, scores.

Headless by construction: every figure is a `matplotlib.figure.Figure` drawn on an Agg canvas, never pyplot,
so no display or global backend is touched. Every figure has a fixed size and dpi (`FIGURE_SIZES`, `DPI`) and is
saved without tight bounding boxes, so each PNG has a known pixel size. Each function returns the path written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.patches import Patch
from matplotlib.text import Text
from PIL import Image

from ..errors import printable
from ..io.files import atomic_path
from ..io.images import ImageSet
from ..io.tables import number
from ..rdm.core import group_average, rank_unit, square_rdm, upper_tri

DPI = 100
FIGURE_SIZES: dict[str, tuple[float, float]] = {  # inches; pixels = inches * DPI
    "rdm": (10.0, 5.0),
    "mds": (7.0, 7.0),
    "lr_range": (6.0, 4.0),
    "training": (11.0, 4.0),
    "scores": (10.0, 5.0),
}
RDM_CMAP = "viridis"


def pixel_size(kind: str) -> tuple[int, int]:
    """(width, height) in pixels of the PNG a plot of this kind writes."""
    w, h = FIGURE_SIZES[kind]
    return round(w * DPI), round(h * DPI)


# Numbers beyond +-PLOT_LIMIT are left out of a figure (a gap), and the figure says how many: matplotlib's axis
# arithmetic overflows near 1e308 (the span of -1e308 to 1e308 is infinite: warnings, then a singular transform),
# and no loss, rate, epoch or score a run writes is that large.
PLOT_LIMIT = 1e30


class _Drawn:
    """Numbers as one figure draws them: missing ones NaN (a gap), and those beyond +-PLOT_LIMIT (or infinite)
    NaN too, counted so that the figure can say so (`say_left_out`)."""

    def __init__(self) -> None:
        self.left_out = 0

    def __call__(self, value) -> float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            return math.nan
        if abs(result) > PLOT_LIMIT:  # NaN compares False: a missing value, not one left out
            self.left_out += 1
            return math.nan
        return result

    def array(self, values: Iterable) -> np.ndarray:
        return np.array([self(v) for v in values], dtype=float)

    def say_left_out(self, fig: Figure) -> None:
        """A line under the figure naming how many values it leaves out, when it leaves any."""
        if self.left_out:
            limit = f"{PLOT_LIMIT:.0e}".replace("+", "")
            fig.supxlabel(f"{self.left_out} value{'s' if self.left_out > 1 else ''} beyond +-{limit} not drawn",
                          fontsize="small", color="C3")


def _figure(kind: str) -> Figure:
    fig = Figure(figsize=FIGURE_SIZES[kind], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """The figure as a PNG at `path`, written atomically. Its titles and legends name targets, keys and files of
    the user's: each text is drawn escaped (errors.printable), as the terminal shows them, since a font has no glyph
    for a control character (and matplotlib's warning would print it raw)."""
    for text in fig.findobj(Text):
        text.set_text(printable(text.get_text()))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _as_rdm(rdm: np.ndarray) -> np.ndarray:
    """One (N, N) RDM; a subject stack is averaged over subjects."""
    rdm = np.asarray(rdm, dtype=np.float64)
    return group_average(rdm) if rdm.ndim > 2 else rdm


def rank_rdm(rdm: np.ndarray) -> np.ndarray:
    """The RDM with its upper triangle rank-transformed and scaled to [0, 1] (the usual display), zero diagonal."""
    rdm = _as_rdm(rdm)
    return square_rdm(rank_unit(upper_tri(rdm)), rdm.shape[-1])


# --------------------------------------------------------------------------- RDMs


def plot_rdm_comparison(target_rdm: np.ndarray, predicted_rdm: np.ndarray, path: str | os.PathLike,
                        title: str | None = None, labels: tuple[str, str] = ("target (group mean)", "predicted"),
                        ) -> Path:
    """Target and predicted RDMs side by side, rank-transformed, one shared colour bar.

    The subtitle gives Spearman's rho between the two upper triangles, the quantity the metric squares.
    """
    target, predicted = rank_rdm(target_rdm), rank_rdm(predicted_rdm)
    if target.shape != predicted.shape:
        raise ValueError(f"target RDM {target.shape} and predicted RDM {predicted.shape} differ in size")
    rho = float(np.corrcoef(upper_tri(target), upper_tri(predicted))[0, 1])
    fig = _figure("rdm")
    axes = fig.subplots(1, 2)
    image = None
    for ax, rdm, label in zip(axes, (target, predicted), labels, strict=True):
        image = ax.imshow(rdm, cmap=RDM_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label)
        ax.set_xlabel("image")
        ax.set_ylabel("image")
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    cbar.set_label("dissimilarity (rank, scaled to [0, 1])")
    fig.suptitle(f"{title + ': ' if title else ''}Spearman rho = {rho:.3f} (N = {len(target)})")
    return _save(fig, path)


# --------------------------------------------------------------------------- MDS


def classical_mds(rdm: np.ndarray, dims: int = 2) -> np.ndarray:
    """Torgerson's classical MDS: (N, dims) coordinates whose distances best match the RDM (least squares on
    the double-centred squared dissimilarities). Deterministic up to the sign of each axis, fixed here so that
    the largest coordinate of each axis is positive."""
    d = _as_rdm(rdm)
    n = len(d)
    centring = np.eye(n) - 1.0 / n
    b = -0.5 * centring @ (d**2) @ centring
    values, vectors = np.linalg.eigh((b + b.T) / 2)
    order = np.argsort(values)[::-1][:dims]
    coords = vectors[:, order] * np.sqrt(np.clip(values[order], 0, None))
    for k in range(coords.shape[1]):
        if coords[np.argmax(np.abs(coords[:, k])), k] < 0:
            coords[:, k] = -coords[:, k]
    return coords


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    pil.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def plot_mds(rdm: np.ndarray, images: ImageSet | Sequence[np.ndarray], path: str | os.PathLike,
             title: str | None = None, thumb_px: int = 28) -> Path:
    """A 2-D classical MDS of an RDM with each image's thumbnail at its point."""
    pictures = list(images.images) if isinstance(images, ImageSet) else list(images)
    d = _as_rdm(rdm)
    if len(pictures) != len(d):
        raise ValueError(f"{len(pictures)} images for a {len(d)} x {len(d)} RDM")
    coords = classical_mds(d)
    fig = _figure("mds")
    ax = fig.subplots()
    ax.scatter(coords[:, 0], coords[:, 1], s=4, c="k")
    for (x, y), picture in zip(coords, pictures, strict=True):
        box = OffsetImage(_thumbnail(picture, thumb_px), zoom=1.0)
        ax.add_artist(AnnotationBbox(box, (x, y), frameon=False, pad=0.0))
    span = np.ptp(coords, axis=0).max() if len(coords) else 1.0
    margin = 0.08 * (span if span > 0 else 1.0)
    ax.set_xlim(coords[:, 0].min() - margin, coords[:, 0].max() + margin)
    ax.set_ylim(coords[:, 1].min() - margin, coords[:, 1].max() + margin)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title(title or f"Classical MDS of the RDM ({len(d)} images)")
    return _save(fig, path)


# --------------------------------------------------------------------------- learning


def plot_lr_range(result: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """The LR range test: loss against rate (log scale), smoothed loss, and the suggested rate marked."""
    drawn = _Drawn()
    lrs = drawn.array(result["lr"])
    fig = _figure("lr_range")
    ax = fig.subplots()
    if "loss" in result:
        ax.plot(lrs, drawn.array(result["loss"]), color="0.7", lw=1, label="loss")
    if "smoothed_loss" in result:
        ax.plot(lrs, drawn.array(result["smoothed_loss"]), color="C0", lw=2, label="smoothed loss")
    suggested = drawn(result.get("suggested_lr"))
    if math.isfinite(suggested) and suggested > 0:
        ax.axvline(suggested, color="C3", ls="--", label=f"suggested lr = {suggested:.2g}")
    drawn.say_left_out(fig)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or "LR range test")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def _number(value) -> float:
    """A number to plot: NaN (a gap in the line) where it is missing."""
    value = number(value)
    return math.nan if value is None else value


def plot_training_curves(history: Iterable[dict], path: str | os.PathLike, title: str | None = None,
                         marked: dict[str, int] | None = None, prior: bool | None = None) -> Path:
    """Training loss and validation % of the noise ceiling per epoch (rows as in FitResult.history or log.csv).

    The epochs `marked` (label -> epoch: those a rule chose and a run used, e.g. per direction and for the final
    fit, the epoch a fit kept), else the epoch of the highest mean rho where logged, and the switch
    from frozen to unfrozen body are marked. A run without validation (a final fit) has the loss panel alone.
    `prior` says whether the fit started from a prior, which names a marked epoch 0: the prior alone, or (without
    one) the untrained head's start; None where it is not known.
    """
    rows = list(history)
    if not rows:
        raise ValueError("no history rows to plot")
    drawn = _Drawn()
    epochs = drawn.array(r.get("epoch", k + 1) for k, r in enumerate(rows))
    loss = drawn.array(r.get("loss") for r in rows)
    val_keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("val/")]
    mean = drawn.array(r.get("val_pct_nc") for r in rows)
    curves = {key: drawn.array(r.get(key) for r in rows) for key in val_keys}
    validated = np.isfinite(mean).any() or any(np.isfinite(curve).any() for curve in curves.values())
    fig = _figure("training")
    ax_loss, ax_val = fig.subplots(1, 2) if validated else (fig.subplots(), None)
    ax_loss.plot(epochs, loss, color="C0", marker="." if len(rows) < 40 else None)
    if np.all(loss[np.isfinite(loss)] > 0) and np.isfinite(loss).any():
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training")
    phases = [r.get("phase") for r in rows]
    switch = next((epochs[k] for k in range(1, len(rows)) if phases[k] != phases[k - 1]), None)
    if switch is not None:
        for ax in (ax_loss, ax_val) if validated else (ax_loss,):
            ax.axvline(switch - 0.5, color="0.5", ls="--", lw=1)
    if validated:
        _validation_panel(ax_val, rows, epochs, curves, mean, marked, prior)
    if title:
        fig.suptitle(title)
    drawn.say_left_out(fig)
    return _save(fig, path)


START_LABELS = {True: " (the prior alone)", False: " (the untrained head)", None: " (before training)"}  # epoch 0


def _validation_panel(ax, rows: list[dict], epochs: np.ndarray, curves: dict[str, np.ndarray], mean: np.ndarray,
                      marked: dict[str, int] | None, prior: bool | None) -> None:
    """The validation curves (column -> values) with the epochs marked: `marked` (label -> epoch, epoch 0 named by
    whether the fit had a `prior`), else the trainer's best."""
    for key, curve in curves.items():
        ax.plot(epochs, curve, lw=1, alpha=0.8, label=key[4:])
    if np.isfinite(mean).any():
        ax.plot(epochs, mean, color="k", lw=2, label="mean")
    if marked:
        styles = [":", "--", "-."]
        by_epoch: dict[int, list[str]] = {}
        for label, epoch in marked.items():  # one line per epoch, naming every use of it
            by_epoch.setdefault(int(epoch), []).append(label)
        for k, (epoch, labels) in enumerate(by_epoch.items()):
            ax.axvline(epoch, color=f"C{3 + k}", ls=styles[k % len(styles)],
                       label=f"epoch {epoch} used: {', '.join(labels)}" + (START_LABELS[prior] if epoch == 0 else ""))
    elif np.isfinite(mean).any():
        chosen_on = np.array([_number(r.get("val_rho")) for r in rows])  # the epoch kept: highest mean rho
        best = int(np.nanargmax(chosen_on if np.isfinite(chosen_on).any() else mean))
        if math.isfinite(epochs[best]):  # an epoch beyond PLOT_LIMIT is not drawn
            ax.axvline(epochs[best], color="C3", ls=":", label=f"best epoch {epochs[best]:g}")
    ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel("% of noise ceiling")
    ax.set_title("validation")


# --------------------------------------------------------------------------- scores


def _interval(row: dict, in_percent: bool, drawn: _Drawn) -> tuple[float, float] | None:
    """A row's 95% interval of r2 (`r2_ci_low`, `r2_ci_high`), in % of its noise ceiling when `in_percent`, as
    `drawn` draws it; None when it has none (or it is not drawn)."""
    low, high = number(row.get("r2_ci_low")), number(row.get("r2_ci_high"))
    if low is None or high is None:
        return None
    if in_percent:
        ceiling = number(row.get("noise_ceiling"))
        if ceiling is None or ceiling <= 0:
            return None
        with np.errstate(over="ignore"):  # a tiny ceiling: an interval beyond PLOT_LIMIT, left out
            low, high = float(np.float64(100) * low / ceiling), float(np.float64(100) * high / ceiling)
    low, high = drawn(low), drawn(high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


# A score chart draws at most this many targets (groups of bars), methods (colours) and directions (hatches), the
# first ones in the rows' order: drawing is bounded in time and memory whatever a table holds (100 targets took
# a minute), and more bars than these are not read at a glance anyway. Every row stays in the tables.
MAX_CHART_TARGETS = 12
MAX_CHART_METHODS = 10  # matplotlib's colour cycle
MAX_CHART_DIRECTIONS = 6  # the hatches below


MAX_LABEL_CHARS = 30  # a target's or method's name on a chart, cut beyond this: the tables hold it in full


def _label(name) -> str:
    """A name as a chart shows it: at most MAX_LABEL_CHARS characters (a long name would crowd the axes out of
    the fixed-size figure and take seconds to lay out)."""
    text = printable(" ".join(str(name).split()))  # escaped, as _save draws every text: tick labels are drawn later
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 3] + "..."


def chart_rows(rows: Iterable[dict], measure: str = "pct_nc") -> tuple[list[dict], str | None]:
    """The scored rows (`measure` a finite number) a score chart draws, and a note saying what it leaves out (None
    when it draws them all): the first MAX_CHART_TARGETS targets, MAX_CHART_METHODS methods and
    MAX_CHART_DIRECTIONS directions."""
    rows = [r for r in rows if number(r.get(measure)) is not None]
    kinds = [("targets", "target", MAX_CHART_TARGETS), ("methods", "method", MAX_CHART_METHODS),
             ("directions", "direction", MAX_CHART_DIRECTIONS)]
    left_out = []
    for plural, column, limit in kinds:
        values = list(dict.fromkeys(r.get(column) or "" for r in rows))
        if len(values) > limit:
            kept = set(values[:limit])
            rows = [r for r in rows if (r.get(column) or "") in kept]
            left_out.append(f"the first {limit} of {len(values)} {plural}")
    note = None if not left_out else (f"The chart shows {' and '.join(left_out)}; every row is in the tables.")
    return rows, note


def plot_scores(rows: Iterable[dict], path: str | os.PathLike, title: str | None = None,
                measure: str = "pct_nc") -> Path:
    """Percent of the noise ceiling per target, one bar per method and direction, with the ceiling band and each
    bar's chance band.

    Rows need method, target, direction and pct_nc; with `nc_lower_pct` (the lower noise ceiling as a percent
    of the upper) the band behind each bar spans its own row's lower ceiling (that direction's test set's) to
    the upper ceiling;
    the upper ceiling (100 %) is always drawn as a line. With `chance_pct_mean` and `chance_pct_95` (this
    prediction's score with its image labels permuted) a dark band over the bar spans the chance mean to its
    95th percentile: a bar that does not rise above it has not beaten chance. With `r2_ci_low` and `r2_ci_high`
    (the score record's 95% bootstrap interval over subjects) each bar has its error bar, in % of the row's
    `noise_ceiling`. With `measure="r2"` the bars are r2 (chance and error bars in r2 too) and there is no
    ceiling band: for data without a noise ceiling (a single group RDM). At most MAX_CHART_TARGETS targets,
    MAX_CHART_METHODS methods and MAX_CHART_DIRECTIONS directions are drawn (`chart_rows`).
    """
    with_ceiling = measure == "pct_nc"
    rows, _ = chart_rows(rows, measure)
    if not rows:
        raise ValueError("no scored rows to plot")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    directions = list(dict.fromkeys(r.get("direction", "") for r in rows))
    series = [(m, d) for m in methods for d in directions]
    drawn = _Drawn()
    lookup = {(r["method"], r.get("direction", ""), r["target"]): drawn(r[measure]) for r in rows}
    unit = "pct" if with_ceiling else "r2"
    chance = {(r["method"], r.get("direction", ""), r["target"]): (drawn(r.get(f"chance_{unit}_mean")),
                                                                  drawn(r.get(f"chance_{unit}_95"))) for r in rows}
    errors = {(r["method"], r.get("direction", ""), r["target"]): _interval(r, with_ceiling, drawn) for r in rows}
    lowers = {(r["method"], r.get("direction", ""), r["target"]): drawn(r.get("nc_lower_pct")) for r in rows}
    width = 0.8 / len(series)
    hatches = ["", "//", "..", "xx", "\\\\", "++"]
    fig = _figure("scores")
    ax = fig.subplots()
    for t in range(len(targets) if with_ceiling else 0):
        ax.hlines(100.0, t - 0.45, t + 0.45, color="0.4", lw=1.5, zorder=1)
    for s, (method, direction) in enumerate(series):
        x = np.arange(len(targets)) - 0.4 + width * (s + 0.5)
        values = [lookup.get((method, direction, t), math.nan) for t in targets]
        for position, target in zip(x, targets, strict=True):  # this row's own lower ceiling, not the target's
            lower = lowers.get((method, direction, target), math.nan)
            if with_ceiling and math.isfinite(lower):
                ax.fill_between([position - width / 2, position + width / 2], lower, 100.0, color="0.85", zorder=0)
        ax.bar(x, np.nan_to_num(values), width * 0.95, color=f"C{methods.index(method)}",
               hatch=hatches[directions.index(direction) % len(hatches)], edgecolor="white", zorder=2)
        for position, target, value in zip(x, targets, values, strict=True):
            bounds = errors.get((method, direction, target))
            if bounds is not None and math.isfinite(value):
                below, above = max(value - bounds[0], 0.0), max(bounds[1] - value, 0.0)
                ax.errorbar(position, value, yerr=[[below], [above]], fmt="none", ecolor="k", elinewidth=1.2,
                            capsize=3, zorder=5)
            low, high = chance.get((method, direction, target), (math.nan, math.nan))
            if math.isfinite(high):
                low = low if math.isfinite(low) else high
                ax.bar(position, max(high - low, 0.0), width * 0.7, bottom=low, color="0.2", alpha=0.45, zorder=3)
                ax.hlines(high, position - width * 0.4, position + width * 0.4, color="k", lw=1.2, zorder=4)
    handles = [Patch(color=f"C{k}", label=_label(m)) for k, m in enumerate(methods)]
    if len(directions) > 1 or directions[0]:
        handles += [Patch(facecolor="0.6", hatch=hatches[k % len(hatches)], edgecolor="white", label=_label(d))
                    for k, d in enumerate(directions)]
    if with_ceiling:
        handles.append(Patch(color="0.85", label="noise ceiling (lower to upper)"))
    if any(math.isfinite(high) for _, high in chance.values()):
        handles.append(Patch(color="0.2", alpha=0.45, label="chance, labels permuted (mean to 95th pct)"))
    if any(bounds is not None for bounds in errors.values()):
        handles.append(Line2D([], [], color="k", marker="_", markersize=8, lw=1.2,
                              label="95% bootstrap interval over subjects"))
    ax.legend(handles=handles, loc="upper left", fontsize="small", ncol=2)
    ax.set_xticks(np.arange(len(targets)), [_label(t) for t in targets])
    values = [v for v in [*lookup.values(), *(high for _, high in chance.values()),
                          *(b[k] for b in errors.values() if b is not None for k in (0, 1))] if math.isfinite(v)]
    values = values or [0.0]  # every score beyond PLOT_LIMIT: an empty chart that says so
    top = max(110.0, max(values) * 1.1) if with_ceiling else max(max(values) * 1.1, 1e-3)
    ax.set_ylim(min(0.0, min(values) * 1.1), top * 1.25)
    drawn.say_left_out(fig)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("% of noise ceiling" if with_ceiling else "r2 (mean over subjects of rho^2)")
    ax.set_title(title or ("Cross-set scores (percent of the noise ceiling)" if with_ceiling
                           else "Scores (r2; no noise ceiling)"))
    return _save(fig, path)


COMPARISON_PANEL = (3.6, 3.4)  # inches per panel of `plot_method_comparison`
COMPARISON_COLUMNS = 4


def plot_method_comparison(bars: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """The report's leading figure: one panel per target (and direction), one bar per method of its signed mean
    rho over subjects with the 95% interval, the noise-ceiling band in rho units (lower to upper where a record
    has an upper; else the lower ceiling as a line), each bar's chance band (+- the rho that reaches the 95th
    percentile of r2 with the image labels permuted) and a marker of how it compares with the panel's best
    method: '*' differs (paired t-test over subjects, Holm-corrected), 'n.s.' does not. `bars` are
    `paired.method_comparison`'s."""
    bars = [b for b in bars if number(b.get("rho_mean")) is not None]
    if not bars:
        raise ValueError("no scored rows to plot")
    panels = list(dict.fromkeys((b["target"], b["direction"]) for b in bars))
    methods = list(dict.fromkeys(b["method"] for b in bars))
    columns = min(COMPARISON_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(max(COMPARISON_PANEL[0] * columns, 10.0), COMPARISON_PANEL[1] * rows + 0.8), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).reshape(-1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    drawn_band = False  # a ceiling band (lower to upper) in some panel: only then in the legend
    for ax, (target, direction) in zip(axes, panels, strict=False):
        group = [b for b in bars if (b["target"], b["direction"]) == (target, direction)]
        x = np.arange(len(group))
        lower = [number(b.get("rho_lower_ceiling")) for b in group]
        upper = [number(b.get("rho_upper_ceiling")) for b in group]
        lower = float(np.mean([v for v in lower if v is not None])) if any(v is not None for v in lower) else None
        upper = float(np.mean([v for v in upper if v is not None])) if any(v is not None for v in upper) else None
        if lower is not None and upper is not None:
            ax.axhspan(lower, upper, color="0.85", zorder=0)
            drawn_band = True
        elif lower is not None:
            ax.axhline(lower, color="0.45", lw=1.5, ls="--", zorder=1)
        tops = []
        for k, b in enumerate(group):
            rho = float(b["rho_mean"])
            chance = number(b.get("chance_rho_95"))
            if chance is not None:
                ax.fill_between([k - 0.45, k + 0.45], -chance, chance, facecolor="none", edgecolor="tab:red",
                                hatch="////", alpha=0.45, lw=0, zorder=1)
            ax.bar(k, rho, 0.7, color=f"C{methods.index(b['method'])}", edgecolor="k" if b.get("best") else "white",
                   lw=1.5 if b.get("best") else 0.5, zorder=2)
            low, high = number(b.get("rho_ci_low")), number(b.get("rho_ci_high"))
            top = max(rho, 0.0)
            if low is not None and high is not None:
                ax.errorbar(k, rho, yerr=[[max(rho - low, 0.0)], [max(high - rho, 0.0)]], fmt="none", ecolor="k",
                            elinewidth=1.2, capsize=3, zorder=4)
                top = max(top, high)
            mark = "best" if b.get("best") else {True: "*", False: "n.s."}.get(b.get("differs"), "")
            if mark:
                ax.annotate(mark, (k, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                            fontsize="small" if mark != "*" else "large", zorder=5)
            tops.append(top)
        values = [*tops, *(v for v in (lower, upper) if v is not None),
                  *(min(float(b["rho_mean"]), number(b.get("rho_ci_low")) or 0.0) for b in group)]
        ax.set_ylim(min(0.0, min(values)) * 1.15 - 0.02, max(max(values), 0.05) * 1.25)
        ax.axhline(0, color="k", lw=0.8, zorder=1)
        ax.set_xticks(x, [b["method"] for b in group], rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{target}" + (f" ({direction})" if direction else ""), fontsize="medium")
        ax.set_ylabel("signed mean rho over subjects", fontsize="small")
    handles = [*([Patch(color="0.85", label="noise ceiling (rho, lower to upper)")] if drawn_band else []),
               Line2D([], [], color="0.45", ls="--", lw=1.5, label="lower noise ceiling (rho)"),
               Patch(facecolor="none", edgecolor="tab:red", hatch="////", alpha=0.45,
                     label="chance: +- rho reaching the 95th pct of permuted r2"),
               Line2D([], [], color="k", marker="_", markersize=8, lw=1.2, label="95% interval over subjects"),
               Line2D([], [], ls="", marker="$*$", color="k", label="differs from the best (paired t, Holm); "
                      "n.s.: does not")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if columns < 3 else 3, fontsize="small")
    fig.suptitle(title or "Every method against the best one, per target", fontsize="large")
    return _save(fig, path)
