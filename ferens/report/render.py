"""One document model rendered twice: a self-contained HTML page and Markdown, same tables."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       line-height: 1.4; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; overflow-wrap: anywhere; }
th { background: #f0f0f0; overflow-wrap: normal; }
.num { text-align: right; }
td.num { white-space: nowrap; overflow-wrap: normal; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.2em; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
details { margin: 0.6em 0 1.2em; }
summary { cursor: pointer; font-weight: 600; }
"""
# Cells that align right and never wrap: numbers (with an interval, ± sd or a star), dashes, and
# "best" in a column of test results.
NUMBER = re.compile(
    r"[-+–]?[0-9][0-9.]*(e[-+]?[0-9]+)?%?( ± [0-9.]+| \[[^\]]*\])?( \*)?|–|best")


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell; missing values show as a dash."""
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{value:.{digits}f}"


@dataclass
class Doc:
    """An ordered list of blocks: headings, paragraphs, notes, tables and images."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", [str(h) for h in headers],
                            [[str(c) for c in row] for row in rows]))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", Path(path), alt))

    def open_details(self, summary: str) -> None:
        """Start a block the HTML page shows collapsed (Markdown: a <details> element)."""
        self.blocks.append(("open_details", summary))

    def close_details(self) -> None:
        self.blocks.append(("close_details",))


def to_html(doc: Doc) -> str:
    """A single page: inline CSS, PNGs as base64 data URIs, every text escaped."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(doc.title)}</title>", f"<style>{STYLE}</style></head><body>",
             f"<h1>{esc(doc.title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "para":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "note":
            parts.append(f'<p class="note">{esc(block[1])}</p>')
        elif kind == "table":
            parts.append(_html_table(block[1], block[2]))
        elif kind == "image":
            data = base64.b64encode(block[1].read_bytes()).decode("ascii")
            parts.append(f'<img alt="{esc(block[2])}" src="data:image/png;base64,{data}">')
        elif kind == "open_details":
            parts.append(f"<details><summary>{esc(block[1])}</summary>")
        elif kind == "close_details":
            parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_markdown(doc: Doc) -> str:
    """Markdown with the same headings and tables; images link to the PNGs next to it."""
    lines = [f"# {_md(doc.title)}", ""]
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            lines += ["#" * block[1] + " " + _md(block[2]), ""]
        elif kind == "para":
            lines += [_md(block[1]), ""]
        elif kind == "note":
            lines += ["> " + _md(block[1]), ""]
        elif kind == "table":
            lines += _md_table(block[1], block[2]) + [""]
        elif kind == "image":
            lines += [f"![{_md(block[2])}]({block[1].name})", ""]
        elif kind == "open_details":
            lines += [f"<details><summary>{_md(block[1])}</summary>", ""]
        elif kind == "close_details":
            lines += ["</details>", ""]
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table whose numeric cells (and the headers of mostly numeric columns) align right."""
    esc = html.escape
    numeric = [[bool(NUMBER.fullmatch(c)) for c in row] for row in rows]
    columns = [sum(len(f) > j and f[j] for f in numeric) * 2 > len(rows)
               for j in range(len(headers))]
    head = "".join(f"<th{_num(n)}>{esc(h)}</th>" for h, n in zip(headers, columns, strict=True))
    body = "".join("<tr>" + "".join(f"<td{_num(n)}>{esc(c)}</td>"
                                    for c, n in zip(row, flags, strict=True)) + "</tr>"
                   for row, flags in zip(rows, numeric, strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(numeric: bool) -> str:
    """The class of a cell whose number never wraps and aligns right."""
    return ' class="num"' if numeric else ""


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_md(c) for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


def _md(text: str) -> str:
    """Escape text for Markdown: HTML-escape it and protect table pipes and line breaks."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")
