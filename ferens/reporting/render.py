"""One document model rendered twice: a self-contained HTML page and Markdown, same tables."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       line-height: 1.4; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.2em; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
"""


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
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_md(c) for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


def _md(text: str) -> str:
    """Escape text for Markdown: HTML-escape it and protect table pipes and line breaks."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")
