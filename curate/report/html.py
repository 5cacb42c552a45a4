"""HTML building blocks for the report: escaping, tables, sections and the page shell (inline CSS only)."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Iterable

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d1dc;font-size:13px}
nav{padding:8px 24px;background:#e8ebf0;font-size:13px}nav a{margin-right:14px;color:#1d4f91}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 18px;margin:16px 0;overflow-x:auto}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #dde2e8;padding:3px 8px;text-align:left}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f0f2f5}.muted{color:#6b7684}.note{color:#6b7684;font-size:13px;margin:4px 0}
.missing{color:#8a5a00;background:#fff7e0;border:1px solid #f0d890;padding:6px 10px;border-radius:4px;font-size:13px}
.error{color:#8a1010;background:#ffecec;border:1px solid #f0a0a0;padding:6px 10px;border-radius:4px;font-size:13px}
.bar{background:#4c78a8;height:14px;border-radius:2px}.bartrack{background:#edf0f4;width:320px}
.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.gallery{display:flex;flex-wrap:wrap;gap:8px;margin:4px 0 10px}
.tile{width:140px;font-size:11px;border:1px solid #dde2e8;border-radius:4px;padding:4px;background:#fafbfc}
.tile img{width:128px;height:128px;object-fit:contain;background:#eee;display:block;margin:0 auto 3px}
.tile .cap{line-height:1.3em;max-height:3.9em;overflow:hidden}.tile .sc{color:#1d4f91}.tile .gt{color:#8a1010}
.tile.keep{border-color:#2e7d32;border-width:2px}
.group{display:inline-flex;gap:6px;padding:6px;border:1px dashed #c4ccd6;border-radius:4px;margin:0 8px 8px 0;vertical-align:top}
.row{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """Numbers for display: ints with thousands separators, floats to `digits` significant digits."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}g}"
    return str(value)


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else ""


@dataclass
class Cell:
    """A table cell: display text plus optional data-* attributes (read by tests and scripts)."""

    text: str
    numeric: bool = False
    data: dict[str, object] = field(default_factory=dict)
    raw_html: bool = False

    def render(self, tag: str = "td") -> str:
        attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in self.data.items())
        cls = ' class="n"' if self.numeric else ""
        body = self.text if self.raw_html else esc(self.text)
        return f"<{tag}{cls}{attrs}>{body}</{tag}>"


def cell(value: object, **data) -> Cell:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return Cell(fmt(value), numeric, data)


def table(header: Iterable[str], rows: Iterable[Iterable[object]], attrs: str = "") -> str:
    """Rows of plain values or Cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [c if isinstance(c, Cell) else cell(c) for c in row]
        body.append("<tr>" + "".join(c.render() for c in cells) + "</tr>")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


def side_by_side(blocks: Iterable[str]) -> str:
    return '<div class="row">' + "".join(f"<div>{b}</div>" for b in blocks) + "</div>"


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


@dataclass
class Section:
    key: str
    title: str
    body: str


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    parts = "".join(f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{parts}</main></body></html>")
