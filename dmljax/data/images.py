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
"""

import dataclasses
import io

import numpy as np
from PIL import Image

MODES = ("square", "pad")
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


def decode(
  path: str, box: np.ndarray | None = None, data: bytes | None = None
) -> Image.Image:
  """The RGB image at `path`, cut to `box` (x1, y1, x2, y2) if given.

  `data`, if given, is the encoded image itself (a tfds record) and `path`
  only names it in errors.

  Raises:
    ValueError: the file is missing, truncated or not an image, naming it.
  """
  try:
    with Image.open(path if data is None else io.BytesIO(data)) as image:
      image = image.convert("RGB")  # Forces the full decode.
  except FileNotFoundError as error:
    raise ValueError(
      f"Image file {path} is missing: the dataset directory is incomplete. "
      "Extract the official archive again (see the reader's docstring for "
      "the layout)."
    ) from error
  except (OSError, SyntaxError) as error:
    if data is not None:
      raise ValueError(
        f"Cannot decode image {path} ({error}): the record is corrupt. "
        "Prepare the tfds dataset again, or use data_source='files'."
      ) from error
    raise ValueError(
      f"Cannot decode image {path} ({error}): the file is corrupt or "
      "truncated. Extract the official archive again, or remove this image "
      "from the list file if it is broken in the archive itself."
    ) from error
  if box is not None:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, image.width), min(y2, image.height)
    if x2 > x1 and y2 > y1:  # A degenerate box keeps the whole image.
      image = image.crop((x1, y1, x2, y2))
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
  """float32 [B, S, S, 3]: decode, box, scale, crop, mirror each image.

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
  return to_input(out, preprocess)
