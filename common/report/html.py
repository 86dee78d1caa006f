"""A self-contained HTML page: every image inlined as a data URI, the style inline, no script from
elsewhere, so `report.html` opens from disk, from a zip or a Kaggle output tab, with no server and
no network.

The page marks itself when it has loaded (`data-images`, `data-broken-images` on <body>): a browser
test reads those instead of guessing whether a picture rendered.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b9c0cc}main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:6px;margin:16px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}p.note{color:#5b6472;margin:4px 0 10px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eceef1;text-align:left;
vertical-align:top}th{color:#5b6472;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}.plots img{max-width:460px;border:1px solid #eee}
.plots figure.wide{flex-basis:100%}.plots figure.wide img{max-width:100%}
figcaption{font-size:12px;color:#5b6472}
.row{display:flex;gap:6px;align-items:flex-start;margin:8px 0;padding-bottom:8px;border-bottom:1px dashed #e2e5ea}
.cell{width:112px;font-size:11px;text-align:center;word-break:break-all}
.cell img{width:108px;height:108px;object-fit:contain;background:#eef0f3;border:3px solid transparent;border-radius:3px}
.query img{border-color:#7a8699}.right img{border-color:#22a35a}.wrong img{border-color:#d64545}
.right b{color:#1b8a4a}.wrong b{color:#c23b3b}
.newclass{width:108px;height:108px;display:flex;align-items:center;justify-content:center;flex-direction:column;
background:repeating-linear-gradient(45deg,#f3f4f6,#f3f4f6 6px,#e7e9ee 6px,#e7e9ee 12px);border:3px solid #cfd4dc;
border-radius:3px;font-weight:600;color:#5b6472}.right .newclass{border-color:#22a35a}.wrong .newclass{border-color:#d64545}
.threshold{width:3px;align-self:stretch;background:#e0a100;margin:0 2px}
.strip{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0 12px}.strip .cell{width:76px}
.strip .cell img{width:72px;height:72px}.tag{display:inline-block;padding:0 6px;border-radius:8px;background:#eef0f3}
.good{color:#1b8a4a}.bad{color:#c23b3b}
"""

# counts images that did not decode; a test (and a curious user) reads the marks on <body>
CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken-images', broken.length);
});
"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_tag(path: Path, caption: str | None = None, wide: bool = False) -> str:
    """A plot of the run (a PNG file), inlined; `wide` ones take the page's width."""
    src = data_uri(Path(path).read_bytes(), "image/png")
    caption = escape(caption if caption is not None else Path(path).stem.replace("_", " "))
    return (f'<figure{" class=wide" if wide else ""}><img src="{src}" alt="{caption}">'
            f'<figcaption>{caption}</figcaption></figure>')


def thumbnail_uri(rgb: np.ndarray, size: int = 108, quality: int = 82) -> str:
    """An RGB uint8 image, shrunk to fit size x size, as a JPEG data URI (a few kB)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode a thumbnail")
    return data_uri(jpeg.tobytes(), "image/jpeg")


def cell(uri: str | None, lines: Sequence[str], kind: str = "", placeholder: str = "") -> str:
    """One thumbnail with its caption lines (already escaped HTML); `kind`: query | right | wrong."""
    picture = (f'<img src="{uri}" alt="{escape(placeholder or "image")}">' if uri
               else f'<div class="newclass">{escape(placeholder or "no image")}</div>')
    return f'<div class="cell {kind}">{picture}<br>{"<br>".join(lines)}</div>'


def table(rows: Iterable[Sequence], header: Sequence[str]) -> str:
    """Rows of already formatted cells; numbers are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f'<td class="num">{value:.4f}</td>')
            elif isinstance(value, (int, np.integer)):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f"<td>{value}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class Page:
    """Sections in order, rendered as one HTML document."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle, self.sections = title, subtitle, []

    def add(self, title: str, body: str, note: str = "") -> None:
        note_html = f'<p class="note">{note}</p>' if note else ""
        self.sections.append(f"<section><h2>{escape(title)}</h2>{note_html}{body}</section>")

    def render(self) -> str:
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{escape(self.title)}</title><style>{STYLE}</style><script>{CHECK}</script></head>"
                f"<body><header><h1>{escape(self.title)}</h1><p>{escape(self.subtitle)}</p></header>"
                f"<main>{''.join(self.sections)}</main></body></html>")
