"""Glyph images rendered from the TrueType fonts that ship inside matplotlib.

Shape letters: N images, S pixels a side.

A class is a Unicode code point (a letter, number, symbol or punctuation mark:
general categories L*, N*, S*, P*) that at least `min_fonts` of the text
fonts in `FONT_FILES` draw; each of those fonts gives one image of it. Two
checks keep an image honest:

- The cmap entry must be what it claims. matplotlib's Computer Modern fonts
  (BaKoMa) map TeX positions to code points, e.g. U+00A1 '¡' to the glyph
  named "Gamma" and '<' to "exclamdown". An entry is dropped when its glyph
  name decodes (Adobe Glyph List) to another character, up to NFC
  equivalence (DejaVu's U+03A9 'Ω' is named "Omega", whose AGL value is the
  Ohm sign U+2126, NFC-equal to it).
- The rendering must have ink and must differ from the font's .notdef box.

Each glyph is drawn white (255) on black (0), antialiased, at 4 × S pixels to
the em, cropped to its ink, scaled down with a Lanczos filter and pasted at
the centre of its bounding box. The scale is fixed per font, so that glyphs
keep their relative sizes ('o' stays smaller than 'O', '.' than '•'): the
capital 'H' spans `CAP_HEIGHT` of the usable height (S minus a border of
max(1, S // 16) pixels each side); a glyph that would not fit is shrunk
further to fit. Vertical position is not kept (',' and '’' can look alike),
nor can homoglyphs differ (Latin 'A', Greek 'Α', Cyrillic 'А'): part of what
makes the set fine-grained. The result is deterministic for given font files
and FreeType version.
"""

import functools
import os
import typing
import unicodedata

import matplotlib
import numpy as np
from fontTools import agl
from fontTools import ttLib
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# DejaVu Sans / Serif / Sans Mono (4 styles each), STIX General (4 styles),
# Computer Modern text fonts. Left out: symbol, size-variant, display and
# last-resort fonts (STIXNonUni*, STIXSiz*, *Display*, LastResort*, cmex10,
# cmmi10, cmsy10), which would add images of other characters.
FONT_FILES = (
  "DejaVuSans.ttf",
  "DejaVuSans-Bold.ttf",
  "DejaVuSans-Oblique.ttf",
  "DejaVuSans-BoldOblique.ttf",
  "DejaVuSerif.ttf",
  "DejaVuSerif-Bold.ttf",
  "DejaVuSerif-Italic.ttf",
  "DejaVuSerif-BoldItalic.ttf",
  "DejaVuSansMono.ttf",
  "DejaVuSansMono-Bold.ttf",
  "DejaVuSansMono-Oblique.ttf",
  "DejaVuSansMono-BoldOblique.ttf",
  "STIXGeneral.ttf",
  "STIXGeneralBol.ttf",
  "STIXGeneralItalic.ttf",
  "STIXGeneralBolIta.ttf",
  "cmr10.ttf",
  "cmb10.ttf",
  "cmti10.ttf",
  "cmss10.ttf",
  "cmtt10.ttf",
)
MIN_FONTS = 12
CATEGORIES = ("L", "N", "S", "P")
CAP_HEIGHT = 0.6
_NOTDEF = "\U0010fffd"  # A private-use code point no font here maps.


class Glyphs(typing.NamedTuple):
  """Rendered glyphs, sorted by code point, then by font.

  Attributes:
    images: uint8 [N, S, S], white glyph on black.
    code_points: int32 [N], each image's class.
    fonts: int32 [N], each image's index into `font_files`.
    font_files: the fonts, as file names in `font_dir()`.
  """

  images: np.ndarray
  code_points: np.ndarray
  fonts: np.ndarray
  font_files: tuple[str, ...]


def font_dir() -> str:
  """The folder of the TrueType fonts that ship inside matplotlib."""
  return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_paths(font_files: tuple[str, ...] = FONT_FILES) -> tuple[str, ...]:
  """Full paths of `font_files`; FileNotFoundError names any missing one."""
  paths = tuple(os.path.join(font_dir(), f) for f in font_files)
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
      f"Fonts not found (is matplotlib installed in full?): {missing}."
    )
  return paths


def _is_class_character(code_point: int) -> bool:
  return unicodedata.category(chr(code_point))[0] in CATEGORIES


def _name_agrees(code_point: int, glyph_name: str) -> bool:
  """False when the glyph's name says it draws another character."""
  decoded = agl.toUnicode(glyph_name)
  if len(decoded) != 1 or unicodedata.category(decoded) == "Co":
    return True  # An opaque name ("glyph12") or a private-use one.
  nfc = functools.partial(unicodedata.normalize, "NFC")
  return nfc(decoded) == nfc(chr(code_point))


def font_coverage(path: str) -> frozenset[int]:
  """The class code points whose cmap entry in the font at `path` is sound.

  >>> sorted(font_coverage(font_paths(("cmr10.ttf",))[0]))[:3]
  [33, 35, 36]
  """
  font = ttLib.TTFont(path, lazy=True)
  try:
    return frozenset(
      code_point
      for code_point, glyph_name in font.getBestCmap().items()
      if _is_class_character(code_point)
      and font.getGlyphID(glyph_name) != 0
      and _name_agrees(code_point, glyph_name)
    )
  finally:
    font.close()


def _ink(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray | None:
  """The glyph drawn white on black, cropped to its ink; None if blank."""
  left, top, right, bottom = font.getbbox(char)
  canvas = Image.new("L", (right - left + 2, bottom - top + 2))
  ImageDraw.Draw(canvas).text((1 - left, 1 - top), char, fill=255, font=font)
  pixels = np.asarray(canvas)
  rows = np.flatnonzero(pixels.max(axis=1))
  cols = np.flatnonzero(pixels.max(axis=0))
  if rows.size == 0:
    return None
  return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit(ink: np.ndarray, image_size: int, scale: float) -> np.ndarray:
  """`ink` scaled by `scale` (less if too big), centred in [S, S]."""
  inner = image_size - 2 * max(1, image_size // 16)
  height, width = ink.shape
  scale = min(scale, inner / max(height, width))
  new_h = max(1, round(height * scale))
  new_w = max(1, round(width * scale))
  small = Image.fromarray(ink).resize((new_w, new_h), Image.Resampling.LANCZOS)
  out = np.zeros((image_size, image_size), np.uint8)
  top, left = (image_size - new_h) // 2, (image_size - new_w) // 2
  out[top : top + new_h, left : left + new_w] = np.asarray(small)
  return out


def _render_font(
  path: str, code_points: list[int], image_size: int
) -> dict[int, np.ndarray]:
  """{code point: [S, S] image} for the code points the font draws."""
  font = ImageFont.truetype(
    path, size=4 * image_size, layout_engine=ImageFont.Layout.BASIC
  )
  notdef = _ink(font, _NOTDEF)
  cap = _ink(font, "H")
  inner = image_size - 2 * max(1, image_size // 16)
  cap_pixels = cap.shape[0] if cap is not None else 0.7 * 4 * image_size
  scale = CAP_HEIGHT * inner / cap_pixels
  images = {}
  for code_point in code_points:
    ink = _ink(font, chr(code_point))
    if ink is None or (
      notdef is not None
      and ink.shape == notdef.shape
      and np.array_equal(ink, notdef)
    ):
      continue
    images[code_point] = _fit(ink, image_size, scale)
  return images


def render_glyphs(
  *,
  image_size: int = 32,
  font_files: tuple[str, ...] = FONT_FILES,
  min_fonts: int = MIN_FONTS,
  code_points: typing.Iterable[int] | None = None,
) -> Glyphs:
  """Renders every code point drawn by at least `min_fonts` of the fonts.

  Args:
    image_size: S, the side of the square images, at least 8.
    font_files: font file names in `font_dir()`.
    min_fonts: the fewest fonts (images) a class needs.
    code_points: candidates to consider (default: all of Unicode).

  Returns:
    The images, sorted by code point then font; each code point has between
    `min_fonts` and `len(font_files)` images.

  >>> glyphs = render_glyphs(image_size=16, code_points=map(ord, "Aé"))
  >>> glyphs.images.shape, np.unique(glyphs.code_points, return_counts=True)
  ((37, 16, 16), (array([ 65, 233], dtype=int32), array([21, 16])))
  """
  if image_size < 8:
    raise ValueError(f"image_size must be at least 8, got {image_size}.")
  if not 1 <= min_fonts <= len(font_files):
    raise ValueError(
      f"min_fonts must lie in 1..{len(font_files)} (the number of fonts), "
      f"got {min_fonts}."
    )
  paths = font_paths(font_files)
  coverage = [font_coverage(path) for path in paths]
  wanted = None if code_points is None else set(code_points)
  counts = {}
  for covered in coverage:
    for code_point in covered if wanted is None else covered & wanted:
      counts[code_point] = counts.get(code_point, 0) + 1
  candidates = sorted(c for c, n in counts.items() if n >= min_fonts)
  rendered = [
    _render_font(path, [c for c in candidates if c in covered], image_size)
    for path, covered in zip(paths, coverage, strict=True)
  ]
  images, classes, fonts = [], [], []
  for code_point in candidates:
    drawn = [i for i, r in enumerate(rendered) if code_point in r]
    if len(drawn) < min_fonts:
      continue
    images += [rendered[i][code_point] for i in drawn]
    classes += [code_point] * len(drawn)
    fonts += drawn
  return Glyphs(
    images=np.stack(images)
    if images
    else np.zeros((0, image_size, image_size), np.uint8),
    code_points=np.asarray(classes, np.int32),
    fonts=np.asarray(fonts, np.int32),
    font_files=tuple(font_files),
  )
