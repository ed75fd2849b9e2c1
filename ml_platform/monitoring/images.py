"""PNG images inline in Markdown: a matplotlib figure as PNG bytes, and as ``![alt](data:image/png;base64,..)``.

Dagster's UI renders a Markdown metadata value with its sanitizer allowing ``data:`` image sources, so
an image embedded this way is shown where the metadata is, with no file or server behind it. It is
stored in the event log with every materialization, so images meant for it are drawn small (a low dpi,
a few tens of kB; :data:`INLINE_DPI`); the full-size PNG goes to MLflow (ml_platform.monitoring.artifacts).
"""

from __future__ import annotations

import base64
import io
import struct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Pixels per inch of the images embedded in Markdown: the 12x8 in dashboard is 720x480 px at 60.
INLINE_DPI = 60


def figure_png(figure, dpi: float | None = None) -> bytes:
    """``figure`` (a matplotlib Figure with an Agg canvas) as PNG bytes, at ``dpi`` (default: the figure's)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi if dpi is not None else figure.dpi)
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels (from the IHDR chunk); ValueError for bytes that are not a PNG."""
    if png[:8] != PNG_MAGIC or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def markdown_image(png: bytes, alt: str) -> str:
    """``png`` as a Markdown image with its bytes inline (``data:image/png;base64,...``). The alt text
    (what a reader without the image gets) loses the characters that would end it early."""
    png_size(png)  # refuse anything that is not a PNG before it is labelled as one
    text = " ".join(alt.replace("[", "(").replace("]", ")").split())
    return f"![{text}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
