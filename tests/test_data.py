"""Tests for dmljax.data: embedded datasets, glyph rendering, caching, P×K."""

import json
import os
import types

import ml_collections
import numpy as np
import pytest
from sklearn import datasets

from dmljax.data import augment
from dmljax.data import embedded
from dmljax.data import from_config
from dmljax.data import glyphs
from dmljax.data import pk
from dmljax.data.split import Split
from dmljax.data.split import split_by_class

# A small glyph subset: ASCII and Greek render in about a second.
_SUBSET = [*range(0x21, 0x7F), *range(0x391, 0x3CA)]
_SIZE = 16


@pytest.fixture(scope="session")
def digits_train():
  return embedded.load_split("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
  return embedded.load_split("digits", "test")


@pytest.fixture(scope="session")
def subset():
  return glyphs.render_glyphs(image_size=_SIZE, code_points=_SUBSET)


@pytest.fixture
def fake_render(subset, monkeypatch):
  """Makes load_split("glyphs") render the subset; counts the renders."""
  calls = []

  def render(image_size):
    calls.append(image_size)
    return {
      "images": subset.images,
      "code_points": subset.code_points,
      "fonts": subset.fonts,
    }

  monkeypatch.setattr(embedded, "_render_glyphs", render)
  return calls


def _split(counts, size=4):
  """A Split with counts[c] images of class c; image i is filled with i."""
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  images = np.broadcast_to(
    np.arange(labels.size, dtype=np.uint8)[:, None, None, None],
    (labels.size, size, size, 1),
  ).copy()
  names = tuple(str(c) for c in range(len(counts)))
  return Split(images, labels, names, "toy/train")


def _take(dataset, n):
  iterator = iter(dataset)
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


# ---------------------------------------------------------------- digits


@pytest.mark.parametrize(
  "split, names, size", [("train", "01234", 901), ("test", "56789", 896)]
)
def test_digits_split(split, names, size):
  data = embedded.load_split("digits", split)
  assert data.name == f"digits/{split}"
  assert data.class_names == tuple(names)
  assert data.images.shape == (size, 8, 8, 1)
  assert data.images.dtype == np.uint8 and data.labels.dtype == np.int32
  assert data.images.max() == 255
  np.testing.assert_array_equal(np.unique(data.labels), np.arange(5))
  raw = datasets.load_digits()
  keep = np.isin(raw.target, [int(n) for n in names])
  np.testing.assert_array_equal(data.labels, raw.target[keep] - int(names[0]))
  expected = np.round(raw.images[keep] * 255 / 16)
  np.testing.assert_array_equal(data.images[..., 0], expected)


def test_digits_image_size():
  data = embedded.load_split("digits", "test", image_size=16)
  assert data.images.shape == (896, 16, 16, 1)


@pytest.mark.parametrize(
  "name, split, match",
  [
    ("mnist", "train", "valid datasets: .'digits', 'glyphs'"),
    ("digits", "val", "valid splits: .'train', 'test'"),
  ],
)
def test_load_split_unknown_names(name, split, match):
  with pytest.raises(ValueError, match=match):
    embedded.load_split(name, split)


def test_load_split_rejects_tiny_images():
  with pytest.raises(ValueError, match="at least 8"):
    embedded.load_split("digits", "train", image_size=4)


def test_split_is_read_only(digits_train):
  with pytest.raises(ValueError, match="read-only"):
    digits_train.images[0, 0, 0, 0] = 1


@pytest.mark.parametrize(
  "counts, match",
  [([2, 1, 3], "fewer than 2 images: \\['1'\\]"), ([4], "at least 2 classes")],
)
def test_split_rejects_small_classes(counts, match):
  with pytest.raises(ValueError, match=match):
    _split(counts)


def test_split_rejects_bad_labels():
  with pytest.raises(ValueError, match="int32"):
    Split(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4), ("a",), "bad")


# ---------------------------------------------------------------- glyphs


def test_glyph_classes_have_enough_fonts(subset):
  code_points, counts = np.unique(subset.code_points, return_counts=True)
  assert ord("A") in code_points and ord("Ω") in code_points
  assert counts.min() >= glyphs.MIN_FONTS
  assert counts.max() <= len(glyphs.FONT_FILES)
  assert subset.images.shape == (len(subset.code_points), _SIZE, _SIZE)
  assert subset.images.dtype == np.uint8


def test_glyphs_sorted_by_code_point_then_font(subset):
  order = np.lexsort((subset.fonts, subset.code_points))
  np.testing.assert_array_equal(order, np.arange(len(order)))


def test_glyphs_white_on_black_with_border(subset):
  border = max(1, _SIZE // 16)
  assert (subset.images.max(axis=(1, 2)) > 128).all()  # Ink on every image.
  assert subset.images[:, :border].max() == 0
  assert subset.images[:, -border:].max() == 0
  assert subset.images[:, :, :border].max() == 0
  assert subset.images[:, :, -border:].max() == 0


def test_glyphs_keep_relative_size(subset):
  def ink(char):  # Mean ink over the fonts.
    return subset.images[subset.code_points == ord(char)].mean()

  assert ink("o") < 0.8 * ink("O")
  assert ink(".") < 0.3 * ink("O")


def test_glyphs_are_deterministic(subset):
  again = glyphs.render_glyphs(image_size=_SIZE, code_points=_SUBSET)
  for field in ("images", "code_points", "fonts"):
    np.testing.assert_array_equal(getattr(again, field), getattr(subset, field))


@pytest.mark.parametrize("char, drawn", [("A", True), ("<", False)])
def test_tex_encoded_fonts_are_not_misread(subset, char, drawn):
  # cmr10 (BaKoMa) draws '¡' at '<' and 'Γ' at '¡': only true glyphs count.
  cmr10 = glyphs.FONT_FILES.index("cmr10.ttf")
  fonts = subset.fonts[subset.code_points == ord(char)]
  assert (cmr10 in fonts) == drawn
  coverage = glyphs.font_coverage(glyphs.font_paths(("cmr10.ttf",))[0])
  assert (ord(char) in coverage) == drawn
  assert 0xA1 not in coverage  # '¡', named "Gamma" there.


def test_notdef_and_blank_glyphs_are_dropped():
  path = glyphs.font_paths(("DejaVuSans.ttf",))[0]
  rendered = glyphs._render_font(path, [ord("A"), 0x4E00, 0x10FFFD], _SIZE)
  assert list(rendered) == [ord("A")]  # No CJK in DejaVu Sans.


def test_glyph_split_disjoint_in_code_point_order(subset):
  code_points, classes = np.unique(subset.code_points, return_inverse=True)
  names = tuple(f"U+{c:04X}" for c in code_points)
  images = subset.images[..., None]
  train = split_by_class(images, classes, names, "train", name="glyphs")
  test = split_by_class(images, classes, names, "test", name="glyphs")
  assert train.class_names + test.class_names == names
  assert train.num_classes == len(names) - len(names) // 2
  assert len(train) + len(test) == len(images)
  assert max(train.class_names) < min(test.class_names)


@pytest.mark.slow
def test_glyphs_full_dataset(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("glyphs"))
  train = embedded.load_split("glyphs", "train", cache_dir=cache)
  test = embedded.load_split("glyphs", "test", cache_dir=cache)
  assert 2000 <= train.num_classes + test.num_classes <= 2600
  assert train.images.shape[1:] == (32, 32, 1)
  for split in (train, test):
    counts = np.bincount(split.labels)
    assert 12 <= counts.min() and counts.max() <= 21
    assert list(split.class_names) == sorted(split.class_names, key=_hex)
  assert _hex(train.class_names[-1]) < _hex(test.class_names[0])
  again = embedded.load_split("glyphs", "train", cache_dir=cache)
  np.testing.assert_array_equal(again.images, train.images)


def _hex(name):
  return int(name[2:], 16)


# ---------------------------------------------------------------- cache


def test_cache_round_trip(fake_render, tmp_path):
  first = embedded.load_split(
    "glyphs", "train", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  second = embedded.load_split(
    "glyphs", "test", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  third = embedded.load_split(
    "glyphs", "train", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  assert fake_render == [_SIZE]
  path = embedded.glyphs_cache_path(_SIZE, str(tmp_path))
  assert os.listdir(tmp_path) == [os.path.basename(path)]
  np.testing.assert_array_equal(first.images, third.images)
  np.testing.assert_array_equal(first.labels, third.labels)
  assert first.class_names == third.class_names
  assert set(first.class_names).isdisjoint(second.class_names)


def test_cache_is_versioned(fake_render, tmp_path, monkeypatch):
  old = embedded.glyphs_cache_path(_SIZE, str(tmp_path))
  embedded.load_split(
    "glyphs", "train", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  monkeypatch.setattr(embedded, "GLYPHS_VERSION", embedded.GLYPHS_VERSION + 1)
  new = embedded.glyphs_cache_path(_SIZE, str(tmp_path))
  assert new != old
  embedded.load_split(
    "glyphs", "train", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  assert fake_render == [_SIZE, _SIZE]
  assert sorted(os.listdir(tmp_path)) == sorted(
    os.path.basename(p) for p in (old, new)
  )


def test_cache_key_depends_on_image_size():
  assert embedded.glyphs_cache_path(16, "c") != embedded.glyphs_cache_path(
    32, "c"
  )


@pytest.mark.parametrize("content", [b"not a zip file", b""])
def test_corrupt_cache_is_rendered_again(fake_render, tmp_path, content):
  path = embedded.glyphs_cache_path(_SIZE, str(tmp_path))
  with open(path, "wb") as file:
    file.write(content)
  data = embedded.load_split(
    "glyphs", "train", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  assert fake_render == [_SIZE] and len(data) > 0
  embedded.load_split(
    "glyphs", "train", image_size=_SIZE, cache_dir=str(tmp_path)
  )
  assert fake_render == [_SIZE]  # The rewritten file is read.


def test_cache_with_another_key_is_replaced(tmp_path):
  path = str(tmp_path / "x.npz")
  embedded.cached_arrays(path, "old", lambda: {"a": np.zeros(2)})
  arrays = embedded.cached_arrays(path, "new", lambda: {"a": np.ones(2)})
  np.testing.assert_array_equal(arrays["a"], np.ones(2))
  arrays = embedded.cached_arrays(path, "new", lambda: {"a": np.zeros(3)})
  np.testing.assert_array_equal(arrays["a"], np.ones(2))


def test_failed_render_leaves_no_file(tmp_path):
  def render():
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    embedded.cached_arrays(str(tmp_path / "x.npz"), "k", render)
  assert os.listdir(tmp_path) == []


def test_cache_dir_from_environment(fake_render, tmp_path, monkeypatch):
  monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
  assert embedded.default_cache_dir() == str(tmp_path)
  embedded.load_split("glyphs", "train", image_size=_SIZE)
  assert os.path.exists(embedded.glyphs_cache_path(_SIZE))
  assert embedded.glyphs_cache_path(_SIZE).startswith(str(tmp_path))


# ---------------------------------------------------------------- augment


def test_random_shift_translates(digits_train):
  images = digits_train.images[:50]
  shifted = augment.random_shift(np.random.default_rng(0), images, max_shift=2)
  assert shifted.shape == images.shape and shifted.dtype == images.dtype
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for image, out in zip(padded, shifted, strict=True):
    windows = [image[y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
    assert any(np.array_equal(out, w) for w in windows)
  assert not np.array_equal(shifted, images)


def test_random_flip_mirrors_or_keeps(digits_train):
  images = digits_train.images[:50]
  flipped = augment.random_flip(np.random.default_rng(0), images)
  mirrored = [
    np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True)
  ]
  kept = [np.array_equal(f, i) for f, i in zip(flipped, images, strict=True)]
  assert all(m or k for m, k in zip(mirrored, kept, strict=True))
  assert any(mirrored) and not all(mirrored)


def test_to_float_range():
  out = augment.to_float(np.array([0, 128, 255], np.uint8))
  assert out.dtype == np.float32 and out[0] == 0 and out[-1] == 1


# ---------------------------------------------------------------- P×K


@pytest.mark.parametrize("batch_size, k", [(10, 5), (12, 3), (10, 2)])
def test_pk_batch_layout(digits_train, batch_size, k):
  batches = pk.pk_batches(
    digits_train, batch_size=batch_size, images_per_class=k, max_shift=0
  )
  for batch in _take(batches, 4):
    assert batch["image"].shape == (batch_size, 8, 8, 1)
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert batch["index"].dtype == np.int32
    groups = batch["label"].reshape(batch_size // k, k)
    assert (groups == groups[:, :1]).all()  # Class after class, K each.
    assert len(np.unique(groups[:, 0])) == batch_size // k  # P distinct.
    ids = batch["index"].reshape(-1, k)
    assert all(len(set(row)) == k for row in ids)  # No repeats.
    np.testing.assert_array_equal(
      digits_train.labels[batch["index"]], batch["label"]
    )
    np.testing.assert_array_equal(
      augment.to_float(digits_train.images[batch["index"]]), batch["image"]
    )


def test_pk_flip_option(digits_train):
  batches = pk.pk_batches(
    digits_train, batch_size=50, images_per_class=10, max_shift=0, flip=True
  )
  batch = _take(batches, 1)[0]
  source = augment.to_float(digits_train.images[batch["index"]])
  mirrored = (batch["image"] == source[:, :, ::-1]).all(axis=(1, 2, 3))
  kept = (batch["image"] == source).all(axis=(1, 2, 3))
  assert (mirrored | kept).all() and (mirrored & ~kept).any()


def test_pk_small_classes_draw_with_replacement():
  data = _split([2, 3, 2])
  batch = _take(pk.pk_batches(data, batch_size=15, images_per_class=5), 1)[0]
  for c, count in enumerate([2, 3, 2]):
    ids = batch["index"][batch["label"] == c]
    assert len(ids) == 5 and len(set(ids.tolist())) <= count
    assert (data.labels[ids] == c).all()


def test_pk_deterministic_given_seed(digits_train):
  def batches(seed):
    return _take(pk.pk_batches(digits_train, batch_size=10, seed=seed), 3)

  first, again, other = batches(1), batches(1), batches(2)
  for a, b, c in zip(first, again, other, strict=True):
    for field in ("image", "label", "index"):
      np.testing.assert_array_equal(a[field], b[field])
    assert not np.array_equal(a["index"], c["index"])


def test_pk_indices_match_pipeline(digits_train):
  batch = _take(pk.pk_batches(digits_train, batch_size=10, seed=3), 2)[1]
  ids = pk.pk_indices(digits_train.labels, 1, batch_size=10, seed=3)
  np.testing.assert_array_equal(ids, batch["index"])


@pytest.mark.parametrize("batch_size, k", [(7, 5), (12, 5), (3, 5)])
def test_pk_batch_size_not_multiple_of_k(digits_train, batch_size, k):
  match = f"batch size {batch_size} .* images_per_class={k}"
  with pytest.raises(ValueError, match=match):
    pk.pk_batches(digits_train, batch_size=batch_size, images_per_class=k)


def test_pk_too_few_classes(digits_train):
  with pytest.raises(ValueError, match="P = 6 classes.*only 5"):
    pk.pk_batches(digits_train, batch_size=30, images_per_class=5)


def test_pk_num_steps(digits_train):
  assert len(list(pk.pk_batches(digits_train, batch_size=10, num_steps=3))) == 3


def test_workers_need_parsed_flags(monkeypatch):
  monkeypatch.setattr(
    from_config.flags, "FLAGS", types.SimpleNamespace(is_parsed=lambda: False)
  )
  from_config.check_grain_workers(0)  # No worker: no flag is read.
  with pytest.raises(RuntimeError, match="mark_as_parsed"):
    from_config.check_grain_workers(1)
  config = ml_collections.ConfigDict(
    {"data": {"name": "digits", "num_workers": 1}}
  )
  with pytest.raises(RuntimeError, match="mark_as_parsed"):
    from_config.load_splits(config)  # Before reading any data.


@pytest.mark.parametrize(
  "num_workers", [0, pytest.param(2, marks=pytest.mark.slow)]
)
def test_pk_checkpoint_restores_the_sequence(digits_train, num_workers):
  def dataset():
    return pk.pk_batches(
      digits_train, batch_size=10, seed=7, num_workers=num_workers
    )

  iterator = iter(dataset())
  for _ in range(3):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = [next(iterator) for _ in range(4)]
  iterator.close()
  restored = iter(dataset())
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for field in ("image", "label", "index"):
      np.testing.assert_array_equal(got[field], want[field])
  restored.close()


@pytest.mark.slow
def test_pk_workers_match_in_process(digits_train):
  def batches(num_workers):
    return _take(
      pk.pk_batches(digits_train, batch_size=10, num_workers=num_workers), 5
    )

  for a, b in zip(batches(0), batches(2), strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["index"], b["index"])


# ---------------------------------------------------------------- eval


@pytest.mark.parametrize("batch_size", [64, 100, 896, 1000])
def test_eval_covers_every_image_once(digits_test, batch_size):
  batches = list(pk.eval_batches(digits_test, batch_size=batch_size))
  assert len(batches) == -(-len(digits_test) // batch_size)
  for batch in batches:
    assert batch["image"].shape == (batch_size, 8, 8, 1)
    assert batch["mask"].dtype == bool and batch["label"].dtype == np.int32
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  label = np.concatenate([b["label"] for b in batches])
  image = np.concatenate([b["image"] for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(len(digits_test)))
  np.testing.assert_array_equal(label[mask], digits_test.labels)
  np.testing.assert_array_equal(
    image[mask], augment.to_float(digits_test.images)
  )
  assert (index[~mask] == -1).all() and (label[~mask] == -1).all()
  assert (image[~mask] == 0).all()
