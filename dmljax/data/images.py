"""JPEG decoding and the paper's image preprocessing, on the host (Pillow).

Shape letters: B images, R the resized side (256), S the crop side (224).

Wu et al., Sec. 5: "Horizontal mirroring and random crops from 256 × 256 are
used for data augmentation. During testing we use a single center crop."
"For the CARS196 dataset we scale the cropped images to 256 × 256. For
CUB200, we scale and pad the images such that their longer side is 256
pixels, keeping the aspect ratio fixed." So an image is first brought to
R × R by one of two `Preprocess.mode`s:

- "square": scaled to R × R (aspect ratio not kept): SOP, CARS196, In-Shop,
  faces (aligned face crops are near-square already);
- "pad": scaled so that its longer side is R, aspect ratio kept, and centred
  on an R × R black canvas: CUB-200-2011;

then cropped to S × S (at random in training, at the centre in testing) and,
in training, mirrored with probability 1/2. An optional bounding box
(x1, y1, x2, y2 in pixels) is cut out before the scaling (the "cropped"
variants of CARS196 and CUB). Images are returned as float32, standardised
with the ImageNet mean and standard deviation (what torchvision's and timm's
pretrained ResNet-50 expect) or scaled to [0, 1].

Decoding (`decode`) is honest about what a file holds:

- 16-bit grayscale (PNG, TIFF: Pillow's modes "I;16*", and "I" holding
  values 0..65535) is scaled by its real range, 65535 → 255 (Pillow's own
  `convert("RGB")` clips it, turning most of the image white); a float image
  ("F") must hold values in [0, 1], and any other range is refused, naming
  the file; every other mode goes through `convert("RGB")` (palette,
  bilevel, CMYK; alpha is dropped);
- the EXIF orientation tag is applied (a phone photo stored sideways is
  turned upright, as viewers show it), after any bounding box, which is
  taken in the stored pixel grid;
- an image over Pillow's decompression-bomb limit is an error naming the
  file and the fix (downscale it), not Pillow's bare exception.
"""

import dataclasses
import io

import numpy as np
from PIL import Image

MODES = ("square", "pad")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# EXIF orientation (tag 0x0112) → the transpose that shows it upright.
_ORIENTATION = 0x0112
_UPRIGHT = {
  2: Image.Transpose.FLIP_LEFT_RIGHT,
  3: Image.Transpose.ROTATE_180,
  4: Image.Transpose.FLIP_TOP_BOTTOM,
  5: Image.Transpose.TRANSPOSE,
  6: Image.Transpose.ROTATE_270,
  7: Image.Transpose.TRANSVERSE,
  8: Image.Transpose.ROTATE_90,
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How a decoded image becomes a network input.

  Attributes:
    mode: "square" or "pad" (see the module docstring).
    resize: R, the side of the scaled image (256 in the paper).
    crop: S, the side of the crop (224 in the paper), at most R.
    flip: mirror training images at random.
    standardize: subtract the ImageNet mean and divide by its std (for
      pretrained networks); False scales to [0, 1].
  """

  mode: str = "square"
  resize: int = 256
  crop: int = 224
  flip: bool = True
  standardize: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(
        f"Unknown preprocessing mode {self.mode!r}; choose one of {MODES}."
      )
    if not 1 <= self.crop <= self.resize:
      raise ValueError(
        f"The crop side must be between 1 and the resized side {self.resize},"
        f" got {self.crop} (--config.data.image_size / resize_size)."
      )


# The paper's settings: 256 × 256 (or longer side 256 and padding), crop 224.
PAPER_SQUARE = Preprocess()
PAPER_PADDED = Preprocess(mode="pad")


def too_large(path: str, error: Exception) -> ValueError:
  """The error for an image over Pillow's decompression-bomb limit."""
  return ValueError(
    f"Image {path} is too large to decode ({error}): downscale it (e.g. to "
    "at most 4,000 pixels a side; training scales images down to a few "
    "hundred pixels anyway) or remove it from the data."
  )


def _rgb(image: Image.Image, path: str) -> Image.Image:
  """`image` as RGB, 16-bit and float images by their real range."""
  if image.mode in _SIXTEEN_BIT:
    values = np.asarray(image).astype(np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise ValueError(
        f"Image {path} holds 32-bit integers (range {values.min():g}.."
        f"{values.max():g}), which have no standard brightness scale: save "
        "it as an 8- or 16-bit image."
      )
    gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
  if image.mode == "F":
    values = np.asarray(image, np.float64)
    if values.size and not (
      np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    ):
      raise ValueError(
        f"Image {path} holds floats outside [0, 1] (range {values.min():g}.."
        f"{values.max():g}), which have no standard brightness scale: save "
        "it as an 8- or 16-bit image, or scale it to [0, 1]."
      )
    gray = np.rint(values * 255.0).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
  return image.convert("RGB")


def decode(
  path: str, box: np.ndarray | None = None, data: bytes | None = None
) -> Image.Image:
  """The RGB image at `path`, cut to `box` (x1, y1, x2, y2) if given.

  `data`, if given, is the encoded image itself (a tfds record) and `path`
  only names it in errors. 16-bit images keep their range and the EXIF
  orientation is applied (module docstring).

  Raises:
    ValueError: the file is missing, truncated, too large or not an image,
      naming it.
  """
  try:
    with Image.open(path if data is None else io.BytesIO(data)) as image:
      image.load()  # Forces the full decode (and reads a PNG's late EXIF).
      orientation = image.getexif().get(_ORIENTATION, 1)
      image = _rgb(image, path)
  except FileNotFoundError as error:
    raise ValueError(
      f"Image file {path} is missing. Restore it or remove it from the "
      "data (a benchmark's: extract the official archive again; the layout "
      "is in its reader's docstring)."
    ) from error
  except Image.DecompressionBombError as error:
    raise too_large(path, error) from error
  except (OSError, SyntaxError) as error:
    if data is not None:
      raise ValueError(
        f"Cannot decode image {path} ({error}): the record is corrupt. "
        "Prepare the tfds dataset again, or use data_source='files'."
      ) from error
    raise ValueError(
      f"Cannot decode image {path} ({error}): the file is corrupt or "
      "truncated. Replace or remove it (a benchmark's image: extract the "
      "official archive again)."
    ) from error
  if box is not None:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, image.width), min(y2, image.height)
    if x2 > x1 and y2 > y1:  # A degenerate box keeps the whole image.
      image = image.crop((x1, y1, x2, y2))
  if orientation in _UPRIGHT:
    image = image.transpose(_UPRIGHT[orientation])
  return image


def resized(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
  """uint8 [R, R, 3]: `image` scaled (and padded) as `preprocess.mode` says.

  >>> image = Image.new("RGB", (40, 20), (255, 0, 0))
  >>> out = resized(image, Preprocess(mode="pad", resize=8, crop=8))
  >>> out.shape, out[:, :, 0].sum(axis=1).tolist()
  ((8, 8, 3), [0, 0, 2040, 2040, 2040, 2040, 0, 0])
  """
  side = preprocess.resize
  if preprocess.mode == "square":
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR))
  scale = side / max(image.width, image.height)
  width = max(1, round(image.width * scale))
  height = max(1, round(image.height * scale))
  scaled = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
  canvas = np.zeros((side, side, 3), np.uint8)
  top, left = (side - height) // 2, (side - width) // 2
  canvas[top : top + height, left : left + width] = scaled
  return canvas


@dataclasses.dataclass(frozen=True)
class Crops:
  """A batch's random crop offsets and flips, one entry per image.

  Attributes:
    top, left: int [B] in 0..R−S.
    flip: bool [B].
  """

  top: np.ndarray
  left: np.ndarray
  flip: np.ndarray

  def __getitem__(self, rows) -> "Crops":
    return Crops(self.top[rows], self.left[rows], self.flip[rows])


def draw_crops(
  rng: np.random.Generator, batch_size: int, preprocess: Preprocess
) -> Crops:
  """Random crop offsets (then flips) for a whole batch, from `rng`.

  Drawn for the global batch so that an image is augmented the same way
  however the batch is split across processes (`Crops[rows]`).
  """
  margin = preprocess.resize - preprocess.crop
  top = rng.integers(0, margin + 1, size=batch_size)
  left = rng.integers(0, margin + 1, size=batch_size)
  flip = np.zeros(batch_size, bool)
  if preprocess.flip:
    flip = rng.random(batch_size) < 0.5
  return Crops(top, left, flip)


def center_crops(batch_size: int, preprocess: Preprocess) -> Crops:
  """The test-time crop: the centre, no flip."""
  offset = (preprocess.resize - preprocess.crop) // 2
  full = np.full(batch_size, offset)
  return Crops(full, full, np.zeros(batch_size, bool))


def to_input(images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
  """uint8 [B, H, W, 3] → float32, standardised or in [0, 1].

  >>> x = to_input(np.full((1, 1, 1, 3), 255, np.uint8), Preprocess())
  >>> np.round(x.ravel(), 3).tolist()
  [2.249, 2.429, 2.64]
  """
  x = images.astype(np.float32) / np.float32(255)
  if preprocess.standardize:
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
  return x


def load_batch(
  paths, boxes, crops: Crops, preprocess: Preprocess, data=None
) -> np.ndarray:
  """float32 [B, S, S, 3]: `load_crops`, then the network's input scaling."""
  return to_input(load_crops(paths, boxes, crops, preprocess, data), preprocess)


def load_crops(
  paths, boxes, crops: Crops, preprocess: Preprocess, data=None
) -> np.ndarray:
  """uint8 [B, S, S, 3]: decode, box, scale, crop, mirror each image.

  Args:
    paths: B file paths.
    boxes: float [B, 4] boxes (x1, y1, x2, y2), or None.
    crops: the batch's crop offsets and flips.
    preprocess: the scaling and the crop side.
    data: B encoded images (tfds records) to decode instead of reading
      `paths`, or None.
  """
  size = preprocess.crop
  out = np.empty((len(paths), size, size, 3), np.uint8)
  for i, path in enumerate(paths):
    image = resized(
      decode(
        path,
        None if boxes is None else boxes[i],
        None if data is None else data[i],
      ),
      preprocess,
    )
    top, left = int(crops.top[i]), int(crops.left[i])
    patch = image[top : top + size, left : left + size]
    out[i] = patch[:, ::-1] if crops.flip[i] else patch
  return out
