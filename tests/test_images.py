"""Images and listings read honestly (findings 4 and 8).

16-bit and float images keep their range, EXIF orientation is applied,
oversized and corrupt files are named with the fix, and CSVs saved by
Excel (byte-order mark, semicolons, UTF-16) are read or refused clearly.
"""

import numpy as np
import pytest
from PIL import Image

from dmljax.data import folder
from dmljax.data import images


def _save(array, path, mode=None):
  Image.fromarray(array, mode).save(path)
  return str(path)


def test_16_bit_png_keeps_its_range(tmp_path):
  ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
  path = _save(ramp, tmp_path / "g16.png")
  assert Image.open(path).mode.startswith("I")
  decoded = np.asarray(images.decode(path))
  assert decoded.shape == (64, 64, 3)
  expected = np.rint(ramp / 257.0).astype(np.uint8)
  np.testing.assert_array_equal(decoded[..., 0], expected)
  assert decoded.min() == 0 and decoded.max() == 255
  assert (decoded == 255).mean() < 0.01  # Not the clipped solid white.


def test_16_bit_mid_grey_is_mid_grey_in_training_batches(tmp_path):
  path = _save(np.full((40, 40), 32768, np.uint16), tmp_path / "grey.png")
  preprocess = images.Preprocess(resize=36, crop=32, standardize=False)
  batch = images.load_batch(
    [path], None, images.center_crops(1, preprocess), preprocess
  )
  np.testing.assert_allclose(batch, 128 / 255, atol=1e-6)


def test_32_bit_integer_image_within_16_bits_is_scaled(tmp_path):
  image = Image.fromarray(np.full((8, 8), 65535, np.int32), "I")
  path = str(tmp_path / "i32.tif")
  image.save(path)
  assert np.asarray(images.decode(path)).min() == 255


def test_float_images_in_unit_range_are_scaled_and_others_refused(tmp_path):
  good = str(tmp_path / "good.tif")
  Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(good)
  assert np.asarray(images.decode(good)).max() == 128
  bad = str(tmp_path / "bad.tif")
  Image.fromarray(np.full((8, 8), 300.0, np.float32), "F").save(bad)
  with pytest.raises(ValueError, match="bad.tif holds floats outside"):
    images.decode(bad)


def test_8_bit_images_decode_as_before(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
  path = _save(pixels, tmp_path / "rgb.png")
  np.testing.assert_array_equal(np.asarray(images.decode(path)), pixels)
  gray = _save(pixels[..., 0], tmp_path / "gray.png")
  decoded = np.asarray(images.decode(gray))
  np.testing.assert_array_equal(decoded[..., 2], pixels[..., 0])


def _with_orientation(path, pixels, orientation):
  image = Image.fromarray(pixels)
  exif = Image.Exif()
  exif[0x0112] = orientation
  image.save(path, exif=exif.tobytes())
  return str(path)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
  pixels = np.zeros((20, 40, 3), np.uint8)  # Stored landscape,
  pixels[:, :20] = 255  # left half white.
  path = _with_orientation(tmp_path / f"o.{suffix}", pixels, 6)  # Rotate 90°.
  decoded = np.asarray(images.decode(path))
  assert decoded.shape == (40, 20, 3)  # Shown portrait,
  assert decoded[:18].mean() > 200 and decoded[22:].mean() < 50  # top white.


def test_a_box_is_cut_in_the_stored_grid_before_the_orientation(tmp_path):
  pixels = np.zeros((20, 40, 3), np.uint8)
  pixels[:, :20] = 255
  path = _with_orientation(tmp_path / "o.png", pixels, 3)  # Rotate 180°.
  decoded = np.asarray(images.decode(path, box=np.array([0, 0, 20, 20])))
  assert decoded.shape == (20, 20, 3) and decoded.min() == 255


def test_an_oversized_image_is_named_with_the_fix(tmp_path, monkeypatch):
  path = _save(np.zeros((40, 40), np.uint8), tmp_path / "big.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Bomb above 200 px.
  with pytest.raises(ValueError, match="big.png is too large.*downscale it"):
    images.decode(path)
  with pytest.raises(ValueError, match="big.png is too large.*downscale it"):
    folder.check_image(path)


def test_a_corrupt_image_does_not_blame_an_archive_first(tmp_path):
  noise = np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8)
  good = _save(noise, tmp_path / "good.png")
  torn = tmp_path / "torn.png"
  torn.write_bytes(open(good, "rb").read()[:400])
  with pytest.raises(ValueError) as error:
    images.decode(str(torn))
  message = str(error.value)
  assert "torn.png" in message and "Replace or remove it" in message
  assert message.index("Replace or remove it") < message.index("archive")


def _csv_folder(tmp_path):
  for c in range(2):
    for j in range(2):
      (tmp_path / f"c{c}").mkdir(exist_ok=True)
      _save(np.full((8, 8), 60 * c, np.uint8), tmp_path / f"c{c}" / f"{j}.png")
  return [f"c{c}/{j}.png,c{c}" for c in range(2) for j in range(2)]


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
  rows = _csv_folder(tmp_path)
  path = tmp_path / "excel.csv"
  path.write_bytes(("\ufeffpath,label\n" + "\n".join(rows) + "\n").encode())
  listing = folder.read_csv(str(path))
  assert listing.classes == ("c0", "c0", "c1", "c1")


def test_a_semicolon_csv_gets_the_separator_hint(tmp_path):
  rows = _csv_folder(tmp_path)
  path = tmp_path / "semi.csv"
  path.write_text("path;label\n" + "\n".join(r.replace(",", ";") for r in rows))
  with pytest.raises(ValueError, match="separated by ';'"):
    folder.read_csv(str(path))


def test_a_utf16_csv_is_refused_with_the_fix(tmp_path):
  rows = _csv_folder(tmp_path)
  path = tmp_path / "utf16.csv"
  path.write_text("path,label\n" + "\n".join(rows), encoding="utf-16")
  with pytest.raises(ValueError, match="is not UTF-8 text.*CSV UTF-8"):
    folder.read_csv(str(path))


def test_a_header_only_csv_is_refused(tmp_path):
  path = tmp_path / "empty.csv"
  path.write_text("path,label\n")
  with pytest.raises(ValueError, match="lists no images"):
    folder.read_csv(str(path))
