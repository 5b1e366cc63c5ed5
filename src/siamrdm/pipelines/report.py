"""A run folder as one page: report.md (images linked) and report.html (images embedded, one self-contained file).

The report is generic (but only for a folder siamrdm marked as its run: the pages and plots it writes replace
only files siamrdm wrote): it has a section for each kind of thing it finds, so it serves `siamrdm evaluate`,
`siamrdm challenge` and `siamrdm fit` folders alike:

- settings.json / config.json: the run's settings, verbatim;
- score tables: every top-level CSV with method, target and pct_nc columns (evaluation.csv, validation.csv):
  first, at the top of the page, every method compared with the best one per target (signed rho with its
  interval, the ceiling and chance bands, Holm-corrected paired tests; methods.png), then the tables in full and
  as a percent-of-ceiling summary, with a bar chart drawn if the folder has none;
- lr_find.json anywhere below: the LR range test curve (drawn next to it);
- log.csv anywhere below: training and validation curves per epoch (drawn next to it), and the epoch the fit
  kept, as the run's model.pt records it;
- every other PNG below the folder: shown with its path as caption.

With figures=False (a run's --no-plots) the page has the same tables and text but draws and shows no figure.

Only regular files of at most MAX_REPORT_FILE_BYTES are read (a model.pt of any size, for its record of the kept
epochs only: its tensors are mapped, not read; a symbolic link, a FIFO or a device is refused with
one line: it could point anywhere, block or never end), and nothing is drawn before the folder is known to be
writable.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import re
import stat
from pathlib import Path
from urllib.parse import quote

from ..errors import DataError
from ..io.files import MARKER_NAME, check_output_file, read_marker, write_text
from ..io.jsonfiles import parse_json, strict_json_text
from ..io.tables import (
    MAX_SUMMARY_COLUMNS,
    PAIRED_NOTE,
    chance_ranking,
    flag,
    markdown,
    markdown_text,
    number,
    paired_table,
    ranking_table,
    score_table,
    summary,
    summary_columns,
)
from ..rdm.paired import method_comparison, paired_rows
from . import plots
from .methods import baseline_names

SETTINGS_FILES = ("settings.json", "config.json")
SCORE_COLUMNS = {"method", "target", "pct_nc"}  # what makes a CSV a score table

MAX_REPORT_FILE_BYTES = 64 * 2**20  # the largest file (a PNG, CSV or JSON) a report reads

Block = tuple  # ("h2" | "h3" | "p" | "code", text), ("table", header, rows), ("img", path, caption)


def _checked_input(path: Path, limit: int | None = MAX_REPORT_FILE_BYTES) -> Path:
    """`path`, when it is a regular file (not a symbolic link, FIFO or device) of at most `limit` bytes (None:
    any size, for a model file, whose tensors are mapped, not read)."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None
    if stat.S_ISLNK(info.st_mode):
        raise DataError(f"{path}: a symbolic link; a report reads only regular files (replace it with the file)")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file (a FIFO, device or socket); a report reads only regular files")
    if limit is not None and info.st_size > limit:
        raise DataError(f"{path}: {info.st_size:,} bytes, more than the {limit:,} a report reads")
    return path


def _read_bytes(path: Path) -> bytes:
    """A checked input's bytes, never more than the limit (even should it grow meanwhile). A read of n bytes
    allocates n at once, so it asks for the file's size (plus one, to see growth), not for the limit."""
    with open(_checked_input(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        content = f.read(min(size, MAX_REPORT_FILE_BYTES) + 1)
    if len(content) > MAX_REPORT_FILE_BYTES:
        raise DataError(f"{path}: more than the {MAX_REPORT_FILE_BYTES:,} bytes a report reads")
    if len(content) > size:
        raise DataError(f"{path}: grew while it was read; run the report again once the run has finished")
    return content


def _read_text(path: Path, errors: str = "strict") -> str:
    return _read_bytes(path).decode("utf-8", errors)


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(_read_text(path), newline="")))


def _check_row_lengths(path: Path, rows: list[dict], what: str) -> None:
    """Every row of a table the report shows has as many fields as its header, else a DataError naming the file
    and the line: csv.DictReader fills a short row with None (a target 'None') and keeps a long row's extra
    fields under the key None (left out unseen), so a damaged table would become a report that looks like a run's."""
    for k, row in enumerate(rows, start=2):
        header = len(row) - (None in row)
        fields = sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None) or ())
        if fields != header:
            raise DataError(f"{path}: malformed {what}: line {k} has {fields} field{'s' * (fields != 1)} where the "
                            f"header has {header}")


def _settings(path: Path) -> object:
    """A run's settings file: strict JSON (no NaN or Infinity), else a DataError naming the file."""
    if path.is_dir() and not path.is_symlink():
        raise DataError(f"{path}: is a folder, expected the run's settings (a JSON file)")

    return parse_json(_read_bytes(path), path, "settings")


def _training_log(path: Path) -> list[dict]:
    """A training log (log.csv): every row's epoch a whole number and its numbers finite (empty where none was
    had), else a DataError naming the file: a damaged log must not become a report that looks like a run's."""
    try:
        rows = _read_csv(path)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed training log ({' '.join(str(exc).split())})") from None
    _check_row_lengths(path, rows, "training log")
    for k, row in enumerate(rows, start=2):
        epoch = number(row.get("epoch"))
        if epoch is None or epoch != int(epoch) or epoch < 0:
            raise DataError(f"{path}: line {k}: epoch {row.get('epoch')!r} is not a whole number")
        for column, value in row.items():
            if column not in ("epoch", "phase") and value not in (None, "") and number(value) is None:
                raise DataError(f"{path}: line {k}: {column} {value!r} is not a finite number")
    return rows


def _lr_result(path: Path) -> dict:
    """An LR range test (lr_find.json): learning rates (positive numbers), losses of the same length (numbers, null
    where none was had), an optional suggested rate; a DataError naming the file otherwise."""
    result = parse_json(_read_bytes(path), path, "LR range test")

    def is_number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(result, dict) or not isinstance(result.get("lr"), list) or not result["lr"] or not all(
            is_number(v) and v > 0 for v in result["lr"]):
        raise DataError(f"{path}: malformed LR range test (expected an object whose 'lr' is a list of positive "
                        "learning rates)")
    for name in ("loss", "smoothed_loss"):
        values = result.get(name)
        if values is not None and not (isinstance(values, list) and len(values) == len(result["lr"])
                                       and all(v is None or is_number(v) for v in values)):
            raise DataError(f"{path}: malformed LR range test ('{name}' is not a list of {len(result['lr'])} numbers)")
    suggested = result.get("suggested_lr")
    if suggested is not None and not (is_number(suggested) and suggested > 0):
        raise DataError(f"{path}: malformed LR range test ('suggested_lr' is not a positive number)")
    return result


def _image(path: Path, caption: str) -> Block:
    """A PNG to embed, checked now, so that a bad one stops the report before anything is written."""
    return ("img", _checked_input(path), caption)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _summary_table(rows: list[dict], measure: str = "pct_nc") -> Block:
    """Percent of the noise ceiling (or r2, for data without one): methods down, in the order of
    `tables.chance_ranking`, target (and direction) across, with the mean."""
    order = {method: k for k, method in enumerate(chance_ranking(rows))}
    ranked = sorted(rows, key=lambda r: order[r["method"]])
    return ("table", *summary(ranked, measure, ".1f" if measure == "pct_nc" else ".4f"))


RANKING_NOTE = ("Methods ranked by what beats chance: first by how many of their rows beat this very prediction's "
                "chance level (its image labels permuted; p_perm < 0.05), then by the mean signed rho over subjects "
                "(chance level 0), never by the raw percent of the ceiling, which an RDM with strong per-image "
                "structure reaches by chance.")


def _fits_blocks(run_dir: Path) -> list[Block]:
    """A challenge's final fits (settings.json 'fits': target -> epochs and each seed's record), one row each,
    a fit of 0 epochs flagged as the prior alone."""
    try:
        fits = parse_json(_read_bytes(run_dir / "settings.json"), run_dir / "settings.json", "settings").get("fits")
    except (DataError, AttributeError):
        return []  # no settings, or not a challenge's: the settings section shows what there is
    if not isinstance(fits, dict) or not fits or not all(isinstance(f, dict) for f in fits.values()):
        return []
    body = []
    for target, fit in fits.items():
        epochs = number(fit.get("epochs"))
        seeds = {k: v for k, v in fit.items() if k.startswith("seed") and isinstance(v, dict)}
        alone = epochs == 0 or (seeds and all(v.get("prior_alone") is True for v in seeds.values()))
        body.append([target, "-" if epochs is None else f"{epochs:g}", ", ".join(seeds) or "-",
                     "the prior alone (no trained epoch)" if alone else ""])
    return [("h2", "Final fits"), ("p", "Each target's final fit on both training sets, for the epochs its cross-set "
             "curves chose together (0: the prior alone, since no trained epoch showed a validated gain)."),
            ("table", ["target", "epochs", "seeds", "note"], body)]


COMPARISON_NOTE = ("Each method's signed mean rho over subjects (chance level 0) with its 95% bootstrap interval, "
                   "the noise ceiling in rho units (the grey band, or the dashed line for the lower ceiling alone), "
                   "each bar's chance band (+- the rho that reaches the 95th percentile of its r2 with the image "
                   "labels permuted), and how each method compares with the best one of its panel: * differs "
                   "(paired t-test over subjects, Holm-corrected for the number of comparisons), n.s. does not.")


def _score_tables(run_dir: Path) -> list[tuple[Path, list[dict]]]:
    """The folder's score tables: top-level CSVs with method, target and pct_nc columns, and their rows."""
    tables = []
    for path in sorted(run_dir.glob("*.csv")):
        try:
            rows = _read_csv(path)
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
        if rows and SCORE_COLUMNS <= set(rows[0]):
            _check_row_lengths(path, rows, "score table")  # a score table's damage is named, not skipped
            tables.append((path, rows))
    return tables


def _comparison_blocks(run_dir: Path, tables: list[tuple[Path, list[dict]]], placed: set[Path]) -> list[Block]:
    """The page's first section: each score table's methods compared (paired.method_comparison, drawn by
    plots.plot_method_comparison as methods.png, or STEM_methods.png beside a table other than evaluation.csv).
    A figure alone: the same tests are in each table's section."""
    blocks: list[Block] = []
    for path, rows in tables:
        bars = [b for b in method_comparison(rows, targets=plots.MAX_CHART_TARGETS) if b["rho_mean"] is not None]
        if not bars:
            continue
        chart = path.with_name("methods.png" if path.stem == "evaluation" else f"{path.stem}_methods.png")
        check_output_file(chart)
        plots.plot_method_comparison(bars, chart, title=f"{path.stem}: every method against the best, per target")
        blocks += [("h2", f"Methods compared ({path.name})"), ("p", COMPARISON_NOTE), _image(chart, chart.name)]
        count = len({r["target"] for r in rows})
        if count > plots.MAX_CHART_TARGETS:
            blocks.append(("p", f"The figure compares the methods on the first {plots.MAX_CHART_TARGETS} of {count} "
                                "targets; every row is in the tables."))
        placed.add(chart)
    return blocks


def _collect(run_dir: Path, figures: bool = True) -> list[Block]:
    """The page's blocks, in the order a reader wants them: the methods compared, the scores, the fits, training,
    the other figures, and the run's settings last. Without figures: none drawn, none shown."""
    placed: set[Path] = set()  # the charts already on the page, left out of "Figures"
    tables = _score_tables(run_dir)
    blocks: list[Block] = _comparison_blocks(run_dir, tables, placed) if figures else []  # what a reader wants first
    for path, rows in tables:
        blocks += _score_blocks(path, rows, placed, figures)
    blocks += _fits_blocks(run_dir)
    blocks += _training_blocks(run_dir, placed, figures)
    others = sorted(p for p in run_dir.rglob("*.png") if _visible(p, run_dir) and p not in placed) if figures else []
    if others:
        blocks.append(("h2", "Figures"))
        blocks += [_image(p, str(p.relative_to(run_dir))) for p in others]
    return blocks + _settings_blocks(run_dir)


def _score_blocks(path: Path, rows: list[dict], placed: set[Path], figures: bool = True) -> list[Block]:
    """One score table's section: the ranking, the summary (of the noise ceiling, or r2 without one), every score,
    the paired tests and, with figures, its chart (drawn here where the run did not)."""
    scored = [r for r in rows if number(r.get("pct_nc")) is not None]
    blocks: list[Block] = [("h2", f"Scores ({path.name})")]
    if any(number(r.get("rho_mean")) is not None or flag(r.get("beats_chance")) is not None for r in rows):
        blocks += [("p", RANKING_NOTE), ("table", *ranking_table(rows))]
    columns = len(summary_columns(rows))
    shown = "" if columns <= MAX_SUMMARY_COLUMNS else (f" (the first {MAX_SUMMARY_COLUMNS} of {columns} targets "
                                                      "and directions; the mean is over all, every row is in "
                                                      "the table of all scores)")
    if scored:
        blocks += [("p", f"Percent of the noise ceiling{shown}:"), _summary_table(rows)]
    else:
        blocks += [("p", f"r2 (these data have no noise ceiling){shown}:"), _summary_table(rows, "r2")]
    blocks += [("p", "All scores (chance: mean and 95th percentile of this prediction's score with its image "
                "labels permuted):"), ("table", *score_table(rows))]
    paired = paired_rows(rows, baseline_names())
    if paired:
        blocks += [("p", PAIRED_NOTE), ("table", *paired_table(paired))]
    if not figures:
        return blocks
    chart = path.with_name("scores.png") if path.stem == "evaluation" else path.with_name(f"{path.stem}_scores.png")
    if not chart.is_file() and scored:
        plots.plot_scores(scored, chart, title=f"{path.stem}: percent of the noise ceiling")
    if chart.is_file():
        blocks.append(_image(chart, chart.name))
        placed.add(chart)
        _, left_out = plots.chart_rows(scored)
        if left_out:
            blocks.append(("p", left_out))
    return blocks


def _training_blocks(run_dir: Path, placed: set[Path], figures: bool = True) -> list[Block]:
    """The training section: each LR range test and each fit's training curves, charted with figures."""
    lr_files = sorted(p for p in run_dir.rglob("lr_find.json") if _visible(p, run_dir))
    logs = sorted(p for p in run_dir.rglob("log.csv") if _visible(p, run_dir))
    blocks: list[Block] = [("h2", "Training")] if lr_files or logs else []
    for path in lr_files:
        result = _lr_result(path)
        suggested = result.get("suggested_lr")
        blocks.append(("h3", f"LR range test ({path.relative_to(run_dir)})"))
        if suggested is not None:
            blocks.append(("p", f"Suggested learning rate: {float(suggested):.3g}"))
        if figures:
            chart = plots.plot_lr_range(result, path.with_name("lr_find.png"))
            blocks.append(_image(chart, str(chart.relative_to(run_dir))))
            placed.add(chart)
    for path in logs:
        blocks += _log_blocks(run_dir, path, placed, figures)
    return blocks


def _log_blocks(run_dir: Path, path: Path, placed: set[Path], figures: bool = True) -> list[Block]:
    """One fit's training curves (log.csv, charted with figures) and a line on its epochs, loss and the epoch the
    fit kept."""
    rows = _training_log(path)
    if not rows or "loss" not in rows[0]:
        return []
    # the mean rho of each validated epoch (train.selection_score; older logs have only pct_nc)
    val = [(number(r.get("val_rho", r.get("val_pct_nc"))), number(r.get("val_pct_nc")), int(number(r["epoch"])))
           for r in rows]
    val = [row for row in val if row[0] is not None]
    kept, prior = _kept_epoch(run_dir, path) if val else (None, None)
    where = path.parent.relative_to(run_dir)
    label = "run" if str(where) == "." else str(where)
    blocks: list[Block] = [("h3", f"{'Training curves' if figures else 'Training'} ({path.relative_to(run_dir)})")]
    loss = number(rows[-1].get("loss"))
    trained = sum((number(r.get("epoch")) or 0) > 0 for r in rows)
    text = f"{trained} epochs; final training loss {'-' if loss is None else format(loss, '.4g')}"
    if not trained:
        text = "0 epochs trained: " + ("the untrained head" if prior is False else "the prior alone")
    if val:
        text += _epochs_text(val, kept)
    blocks.append(("p", text + "."))
    if figures:
        chart = plots.plot_training_curves(rows, path.with_name("training_curves.png"), title=f"training: {label}",
                                           marked=None if kept is None else {"kept by the fit": kept}, prior=prior)
        blocks.append(_image(chart, str(chart.relative_to(run_dir))))
        placed.add(chart)
    return blocks


def _epochs_text(val: list[tuple], kept: int | None) -> str:
    """The epoch the fit kept (as its model file records it), and the one of the highest mean validation rho when
    that is another: with a prior, a fit keeps a trained epoch only where every target shows a validated gain,
    which the log's means cannot show. Without a model file (a run stopped before it wrote one), the highest."""
    def pct_text(pct: float | None) -> str:
        return "" if pct is None else f" ({pct:.1f}% of the noise ceiling)"

    _, pct, highest = max(val, key=lambda row: row[0])
    if kept is None:
        return f"; highest mean validation rho at epoch {highest}{pct_text(pct)}"
    kept_pct = next((p for _, p, epoch in val if epoch == kept), None)
    text = f"; kept epoch {kept}" + (", the untrained start" if kept == 0 else "") + pct_text(kept_pct)
    if highest != kept:
        text += (f"; highest mean validation rho at epoch {highest}{pct_text(pct)}, not kept: not a validated "
                 "gain on every target")
    return text


def _kept_epoch(run_dir: Path, log: Path) -> tuple[int | None, bool | None]:
    """The epoch the fit kept for the seed of `log` (FIT/seed<k>/log.csv, FIT in `run_dir`), from FIT/model.pt,
    and whether the fit had a prior (which names its epoch 0); (None, None) where there is no model file (or the
    log is not a seed's). A damaged one is a DataError naming it, as any damaged run file is."""
    model = log.parent.parent / "model.pt"
    if not re.fullmatch(r"seed\d+", log.parent.name) or log.parent == run_dir or not os.path.lexists(model):
        return None, None
    from ..train.predict import kept_epochs

    kept, prior = kept_epochs(_checked_input(model, limit=None))
    if log.parent.name not in kept:
        raise DataError(f"{model}: malformed siamrdm model file: no record of {log.parent.name}, whose log is "
                        f"{log}")
    return kept[log.parent.name], prior


def _settings_blocks(run_dir: Path) -> list[Block]:
    """The run's settings files as JSON, closing the page."""
    blocks: list[Block] = []
    for name in SETTINGS_FILES:
        path = run_dir / name
        if os.path.lexists(path):  # a link, a FIFO or a folder is refused, not skipped
            # a number JSON writes but a float cannot hold (1e999) reads as infinite: shown as missing (null),
            # never as Infinity, which is not JSON
            settings = strict_json_text(_settings(path), indent=2)
            blocks += [("h2", f"Settings ({name})"), ("code", settings)]
    return blocks


# --------------------------------------------------------------------------- rendering


def _markdown(title: str, blocks: list[Block], run_dir: Path) -> str:
    """report.md: every text that can hold a name or a file's value escaped (`tables.markdown_text`, the tables
    by `tables.markdown`), image paths percent-encoded. The settings' JSON stays in its fenced block, the same
    JSON with '<' and '&' as escapes: every line json.dumps writes starts with a bracket, a quote or a number
    after its indent, never a fence, and no viewer renders HTML inside it anyway."""
    out = [f"# {markdown_text(title)}", ""]
    for block in blocks:
        kind = block[0]
        if kind in ("h2", "h3"):
            out += [f"{'#' * int(kind[1])} {markdown_text(block[1])}", ""]
        elif kind == "p":
            out += [markdown_text(block[1]), ""]
        elif kind == "code":  # '<' and '&' occur only inside JSON strings: written as the same characters' escapes
            out += ["```json", block[1].replace("&", "\\u0026").replace("<", "\\u003c"), "```", ""]
        elif kind == "table":
            out += [markdown(block[1], block[2]), ""]
        elif kind == "img":
            out += [f"![{markdown_text(block[2])}]({quote(block[1].relative_to(run_dir).as_posix())})", ""]
    return "\n".join(out)


def _html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
           "td:first-child,th:first-child{text-align:left}pre{background:#f5f5f5;padding:1em;overflow:auto}"
           "figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}</style>",
           "</head><body>", f"<h1>{e(title)}</h1>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h2", "h3"):
            out.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(block[1])}</p>")
        elif kind == "code":
            out.append(f"<pre>{e(block[1])}</pre>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in block[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2]]
            out.append("</table>")
        elif kind == "img":
            data = base64.b64encode(_read_bytes(block[1])).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(block[2])}">'
                       f"<figcaption>{e(block[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | os.PathLike, title: str | None = None, figures: bool = True) -> tuple[Path, Path]:
    """Gather a run folder's settings, tables and plots into run_dir/report.md and run_dir/report.html; with
    figures=False (a run's --no-plots) no figure is drawn or shown."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    if read_marker(run_dir) is None:  # its report.md, report.html and plots could be someone's own files
        raise DataError(f"{run_dir}: not a siamrdm run folder (no {MARKER_NAME}); report reads the folders that "
                        "fit, evaluate, challenge and lr-find write")
    md_path, html_path = check_output_file(run_dir / "report.md"), check_output_file(run_dir / "report.html")
    try:  # the plots drawn next to their data, and the pages
        blocks = _collect(run_dir, figures)
        if not blocks:
            raise DataError(f"{run_dir}: nothing to report (no settings.json, score CSV, log.csv, lr_find.json or "
                            "PNG)")
        title = title or f"siamrdm report: {run_dir.resolve().name}"
        write_text(md_path, _markdown(title, blocks, run_dir))
        write_text(html_path, _html(title, blocks))
    except OSError as exc:
        raise DataError(f"{run_dir}: cannot write the report ({' '.join(str(exc).split())})") from None
    return md_path, html_path
