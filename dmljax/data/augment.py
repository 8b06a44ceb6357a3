"""Host-side image augmentation in NumPy, one seeded generator per batch.

Shape letters: B images, H × W pixels, C channels.

Every function is pure given its `rng` (a `np.random.Generator` the caller
seeds from (seed, step)), so a batch is the same however the pipeline is
split across worker processes. The background is 0 (the embedded datasets
draw white on black), which is what the padding adds.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Draws:
  """The random choices of one batch's augmentation, one entry per image.

  Attributes:
    top, left: int [B] crop offsets in the padded image, in 0..2·max_shift.
    flip: bool [B] mirror the image.
  """

  top: np.ndarray
  left: np.ndarray
  flip: np.ndarray

  def __getitem__(self, rows) -> "Draws":
    """The draws of the images at `rows` of the batch."""
    return Draws(self.top[rows], self.left[rows], self.flip[rows])


def draw(
  rng: np.random.Generator, batch_size: int, *, max_shift: int, flip: bool
) -> Draws:
  """Draws a batch's shifts (then flips) from `rng`, in that order.

  Drawing for the whole batch and applying to a slice of it (`Draws[rows]`)
  gives each image the same augmentation however the batch is split across
  processes.
  """
  if max_shift < 0:
    raise ValueError(f"max_shift must be non-negative, got {max_shift}.")
  zeros = np.zeros(batch_size, np.int64)
  top = left = zeros
  if max_shift:
    top = rng.integers(0, 2 * max_shift + 1, size=batch_size)
    left = rng.integers(0, 2 * max_shift + 1, size=batch_size)
  mirror = np.zeros(batch_size, bool)
  if flip:
    mirror = rng.random(batch_size) < 0.5
  return Draws(top, left, mirror)


def apply(images: np.ndarray, draws: Draws, *, max_shift: int) -> np.ndarray:
  """Shifts (zero padding + crop) and mirrors images as `draws` say.

  Args:
    images: [B, H, W, C], any dtype.
    draws: the batch's `Draws` (B entries).
    max_shift: the padding the draws were made for.

  Returns:
    [B, H, W, C], same dtype.
  """
  if max_shift:
    batch, height, width, _ = images.shape
    padding = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = np.pad(images, padding)
    rows = draws.top[:, None, None] + np.arange(height)[None, :, None]
    cols = draws.left[:, None, None] + np.arange(width)[None, None, :]
    images = padded[np.arange(batch)[:, None, None], rows, cols]
  if draws.flip.any():
    mirror = draws.flip[:, None, None, None]
    images = np.where(mirror, images[:, :, ::-1], images)
  return images


def random_shift(
  rng: np.random.Generator, images: np.ndarray, *, max_shift: int
) -> np.ndarray:
  """Each image padded by `max_shift` zeros a side, then cropped back.

  The crop window is drawn uniformly per image, so the content moves by up
  to `max_shift` pixels along each axis.

  Args:
    rng: the batch's generator.
    images: [B, H, W, C], any dtype.
    max_shift: the padding; 0 returns `images` unchanged.

  Returns:
    [B, H, W, C], same dtype.

  >>> images = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
  >>> random_shift(np.random.default_rng(0), images, max_shift=0)[0, ..., 0]
  array([[0, 1],
         [2, 3]], dtype=uint8)
  """
  return augmented(rng, images, max_shift=max_shift)


def random_flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """Each image mirrored left–right with probability 1/2.

  Off for glyphs and digits: a mirrored glyph is another glyph (b/d, ∈/∋).

  Args:
    rng: the batch's generator.
    images: [B, H, W, C].

  Returns:
    [B, H, W, C], same dtype.
  """
  return augmented(rng, images, max_shift=0, flip=True)


def augmented(
  rng: np.random.Generator,
  images: np.ndarray,
  *,
  max_shift: int,
  flip: bool = False,
) -> np.ndarray:
  """`random_shift`, then `random_flip` if `flip` (one `draw`, one `apply`)."""
  draws = draw(rng, images.shape[0], max_shift=max_shift, flip=flip)
  return apply(images, draws, max_shift=max_shift)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images as float32 in [0, 1] (not standardised).

  >>> to_float(np.array([0, 255], np.uint8)).tolist()
  [0.0, 1.0]
  """
  return images.astype(np.float32) / np.float32(255)
