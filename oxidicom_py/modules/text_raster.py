"""Text as a pixel mask, to burn into an image: Pillow's default font, sized to the image.

:func:`text_mask` gives the glyphs (``True`` where a pixel is ink) and :func:`outline` a one-pixel
ring around them, so burned text can be drawn bright on a dark ring and read on any background.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_SIZE = 8
"""The smallest font size (pixels) used; text that does not fit at this size is wrapped, then clipped."""


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def _width(text: str, size: int) -> int:
    left, _, right, _ = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), text, font=_font(size))
    return int(right - left)


def _wrap(text: str, size: int, width: int) -> str:
    """``text`` with each line broken at spaces so that it fits ``width`` where it can."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and _width(candidate, size) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def fit(text: str, rows: int, columns: int, margin: int) -> tuple[str, int]:
    """The text (wrapped if need be) and a font size: about a twentieth of the image's height (12 to 48 px),
    smaller down to :data:`MIN_SIZE` if the text would be wider than the image, then wrapped at spaces."""
    width = columns - 2 * margin
    size = max(12, min(48, rows // 20))
    while size > MIN_SIZE and _width(text, size) > width:
        size -= 1
    return (text, size) if _width(text, size) <= width else (_wrap(text, size, width), size)


def margin_for(rows: int, columns: int) -> int:
    return max(2, min(rows, columns) // 64)


def text_mask(text: str, rows: int, columns: int, *, size: int | None = None, margin: int | None = None) -> np.ndarray:
    """A (rows, columns) boolean mask of ``text`` drawn from the top-left corner (see :func:`fit`)."""
    margin = margin_for(rows, columns) if margin is None else margin
    if size is None:
        text, size = fit(text, rows, columns, margin)
    canvas = Image.new("L", (columns, rows), 0)
    ImageDraw.Draw(canvas).multiline_text((margin, margin), text, fill=255, font=_font(size))
    return np.asarray(canvas) >= 128


def dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in the 8 directions."""
    padded = np.pad(mask, 1)
    rows, columns = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy : dy + rows, dx : dx + columns]
    return grown


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels next to ``mask`` but not in it."""
    return dilate(mask) & ~mask
