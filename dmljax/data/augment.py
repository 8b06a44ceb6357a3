"""Host-side image augmentation in NumPy, one seeded generator per batch.

Shape letters: B images, H × W pixels, C channels.

Every function is pure given its `rng` (a `np.random.Generator` the caller
seeds from (seed, step)), so a batch is the same however the pipeline is
split across worker processes. The background is 0 (the embedded datasets
draw white on black), which is what the padding adds.
"""

import numpy as np


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
  if max_shift < 0:
    raise ValueError(f"max_shift must be non-negative, got {max_shift}.")
  if max_shift == 0:
    return images
  batch, height, width, _ = images.shape
  padding = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = np.pad(images, padding)
  top = rng.integers(0, 2 * max_shift + 1, size=batch)
  left = rng.integers(0, 2 * max_shift + 1, size=batch)
  rows = top[:, None, None] + np.arange(height)[None, :, None]
  cols = left[:, None, None] + np.arange(width)[None, None, :]
  return padded[np.arange(batch)[:, None, None], rows, cols]


def random_flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """Each image mirrored left–right with probability 1/2.

  Off for glyphs and digits: a mirrored glyph is another glyph (b/d, ∈/∋).

  Args:
    rng: the batch's generator.
    images: [B, H, W, C].

  Returns:
    [B, H, W, C], same dtype.
  """
  flip = rng.random(images.shape[0]) < 0.5
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def augmented(
  rng: np.random.Generator,
  images: np.ndarray,
  *,
  max_shift: int,
  flip: bool = False,
) -> np.ndarray:
  """`random_shift`, then `random_flip` if `flip`."""
  images = random_shift(rng, images, max_shift=max_shift)
  return random_flip(rng, images) if flip else images


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images as float32 in [0, 1] (not standardised).

  >>> to_float(np.array([0, 255], np.uint8)).tolist()
  [0.0, 1.0]
  """
  return images.astype(np.float32) / np.float32(255)
