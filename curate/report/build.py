"""Assemble the run report: one self-contained HTML page (plots and thumbnails embedded) made from a run
directory's files alone. Every section is optional: it renders what the run has and names what is missing."""
from __future__ import annotations

import datetime
import logging
import time
import traceback
from pathlib import Path

from curate.io import atomic_write_bytes
from curate.report import duplicates, funnel, galleries, recipes, tiers, training, truth
from curate.report.html import Section, esc, page, table
from curate.report.runfiles import read_gt
from curate.report.status import run_status

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def _status_section(run_dir: Path) -> str:
    rows = run_status(run_dir)
    return table(["stage", "parts", "done", "failed", "pending", "state", "detail"],
                 [[r["stage"], r["parts"], r["done"], r["failed"], r["pending"], r["state"],
                   r["detail"] + (f" failed: {', '.join(r['failed_parts'])}" if r["failed_parts"] else "")]
                  for r in rows])


def _provenance(run_dir: Path) -> str:
    path = run_dir / "config.resolved.yaml"
    if not path.exists():
        return "no config.resolved.yaml"
    heads = [line[2:] for line in path.read_text().splitlines()[:3] if line.startswith("# ")]
    return "; ".join(heads)


def _safe(key: str, title: str, build) -> Section | None:
    """Render one section; an error in it is shown on the page (and logged) instead of losing the others.
    A build that returns None means the run has no such section."""
    start = time.time()
    try:
        body = build()
    except Exception as err:  # one broken section must not cost the whole report
        log.error("report section %s failed:\n%s", key, traceback.format_exc())
        body = f'<p class="error">This section failed: {esc(type(err).__name__)}: {esc(err)}</p>'
    log.debug("report section %s: %.2fs", key, time.time() - start)
    return None if body is None else Section(key, title, body)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default RUN_DIR/report.html); returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    out = Path(out) if out else run_dir / REPORT_NAME
    start = time.time()
    gt = read_gt(run_dir)
    view = tiers.load(run_dir)
    sections = [
        _safe("status", "Stages", lambda: _status_section(run_dir)),
        _safe("funnel", "Funnel", lambda: funnel.render(run_dir)),
        _safe("scores", "Scores per tier", lambda: tiers.render(view)),
        _safe("recipes", "Recipes", lambda: recipes.render(run_dir, gt)),
        _safe("galleries", "Galleries", lambda: galleries.render(run_dir, view, gt)),
        _safe("duplicates", "Duplicate groups", lambda: duplicates.render(run_dir, gt)),
        _safe("truth", "Against ground truth", lambda: truth.render(run_dir, gt, view)),
        _safe("training", "Training", lambda: training.curves(run_dir)),
        _safe("comparison", "Comparison", lambda: training.comparison(run_dir)),
    ]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    html = page(f"curate report: {run_dir.resolve().name}", f"{run_dir.resolve()} · {_provenance(run_dir)} · "
                f"rendered {stamp}", [s for s in sections if s])
    atomic_write_bytes(out, html.encode("utf-8"))
    log.info("report: %s (%.1f MB, %.1fs)", out, len(html) / 1e6, time.time() - start)
    return out


def write_report_after_failure(run_dir: Path) -> Path | None:
    """After a failed stage: render what exists, and never let a report problem hide the stage's error."""
    try:
        return write_report(run_dir)
    except Exception:
        log.error("report: could not render %s after the failed stage:\n%s", run_dir, traceback.format_exc())
        return None
