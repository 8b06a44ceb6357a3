"""Your own data: folder / CSV listings, splits, errors, train → embed → query.

The fabricated data: tiny grayscale PNGs whose brightness and stripe depend
on the class, so a network can tell classes apart; one class has a single
image (left out of training, still exported).
"""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from subprocesses import run_module

from dmljax.data import folder
from dmljax.data import images as images_lib
from dmljax.data import pk
from dmljax.runtime import export

_PRE = images_lib.Preprocess(resize=20, crop=16, standardize=False)


def _write_png(path, class_id, seed):
  rng = np.random.default_rng(seed)
  pixels = np.full((24, 24), 30 + 20 * class_id, np.float64)
  pixels[:, (3 * class_id) % 24 : (3 * class_id) % 24 + 3] = 250
  pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels.astype(np.uint8), "L").save(path)


def _make_folder(root, *, classes=8, images=4):
  """root/c<i>/<j>.png; class c<classes> has a single image."""
  for c in range(classes):
    for j in range(images):
      _write_png(os.path.join(root, f"c{c}", f"{j}.png"), c, 100 * c + j)
  _write_png(os.path.join(root, f"c{classes}", "0.png"), classes, 999)
  return str(root)


def _write_csv(path, rows, header="path,label", delimiter=","):
  lines = [header] + [delimiter.join(map(str, r)) for r in rows]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_folder_lists_class_subfolders_in_name_order(tmp_path):
  data = _make_folder(tmp_path / "d", classes=3, images=2)
  (tmp_path / "d" / "c0" / "notes.txt").write_text("not an image")
  listing = folder.read_folder(data)
  assert listing.classes == ("c0", "c0", "c1", "c1", "c2", "c2", "c3")
  assert all(os.path.isabs(p) for p in listing.paths)
  assert listing.splits is None


def test_grayscale_images_decode_to_rgb(tmp_path):
  data = _make_folder(tmp_path / "d", classes=2, images=2)
  listing = folder.read_folder(data)
  batch = images_lib.load_batch(
    listing.paths[:2], None, images_lib.center_crops(2, _PRE), _PRE
  )
  assert batch.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batch[..., 0], batch[..., 2])


def test_class_split_is_seeded_disjoint_and_complete(tmp_path):
  listing = folder.read_folder(_make_folder(tmp_path / "d", classes=9))
  test = folder.split_mask(listing, "test", test_fraction=0.3, seed=1)
  train = folder.split_mask(listing, "train", test_fraction=0.3, seed=1)
  classes = np.asarray(listing.classes)
  assert not set(classes[test]) & set(classes[train])
  assert (test ^ train).all()
  assert len(set(classes[test])) == 3  # round(10 classes · 0.3).
  again = folder.split_mask(listing, "test", test_fraction=0.3, seed=1)
  np.testing.assert_array_equal(test, again)
  other = [
    folder.split_mask(listing, "test", test_fraction=0.3, seed=s)
    for s in range(2, 6)
  ]
  assert any((o != test).any() for o in other)


def test_instance_split_keeps_classes_on_both_sides(tmp_path):
  listing = folder.read_folder(_make_folder(tmp_path / "d", classes=3))
  test = folder.split_mask(listing, "test", how="instances")
  classes = np.asarray(listing.classes)
  for name in ("c0", "c1", "c2"):
    assert (test & (classes == name)).sum() == 2  # Half of 4.


def test_explicit_test_classes(tmp_path):
  listing = folder.read_folder(_make_folder(tmp_path / "d", classes=3))
  test = folder.split_mask(listing, "test", test_classes=("c1", "c2"))
  assert set(np.asarray(listing.classes)[test]) == {"c1", "c2"}
  with pytest.raises(ValueError, match=r"not in .*\['nope'\]"):
    folder.split_mask(listing, "test", test_classes=("nope",))


def test_single_image_class_is_left_out_with_a_logged_count(tmp_path, caplog):
  listing = folder.read_folder(_make_folder(tmp_path / "d", classes=3))
  mask = np.ones(len(listing), bool)
  with caplog.at_level(logging.WARNING, logger=folder.__name__):
    split = folder.file_split(listing, mask, name="mine/all", preprocess=_PRE)
  assert split.class_names == ("c0", "c1", "c2")
  assert len(split) == 12
  assert "left out 1 class(es) with a single image" in caplog.text


def test_small_class_is_sampled_with_replacement(tmp_path):
  for c, count in enumerate((2, 5, 5)):
    for j in range(count):
      _write_png(str(tmp_path / "d" / f"k{c}" / f"{j}.png"), c, 10 * c + j)
  listing = folder.read_folder(str(tmp_path / "d"))
  split = folder.file_split(
    listing, np.ones(len(listing), bool), name="mine/train", preprocess=_PRE
  )
  batches = iter(pk.pk_batches(split, batch_size=15, images_per_class=5))
  batch = next(batches)
  assert batch["image"].shape == (15, 16, 16, 3)
  small = batch["index"][batch["label"] == 0]
  assert small.size == 5 and len(set(small.tolist())) <= 2


def test_csv_and_tsv_with_split_column(tmp_path):
  data = _make_folder(tmp_path / "d", classes=4, images=2)
  listing = folder.read_folder(data)
  rows = [
    (
      os.path.relpath(p, tmp_path),
      c.removeprefix("c"),
      "train" if i < 4 else "test",
    )
    for i, (p, c) in enumerate(
      zip(listing.paths[:8], listing.classes[:8], strict=True)
    )
  ][:8]
  for name, delimiter in (("l.csv", ","), ("l.tsv", "\t")):
    path = _write_csv(
      tmp_path / name,
      rows,
      delimiter.join(("path", "label", "split")),
      delimiter,
    )
    csv_listing = folder.read_listing(path)
    assert csv_listing.classes == tuple("00112233")
    test = folder.split_mask(csv_listing, "test", test_fraction=0.9)
    assert test.tolist() == [False] * 4 + [True] * 4


@pytest.mark.parametrize(
  "case, message",
  [
    ("unreadable_image", "Cannot read image .*broken.png"),
    ("empty_class_folder", "class folder.* hold no image .*empty"),
    ("missing_column", r"missing column\(s\) \['label'\]"),
    ("float_label", "label '3.0' is not a class name or an integer id"),
    ("empty_label", "line 3: empty label"),
    ("bad_split", "split 'val' must be 'train' or 'test'"),
    ("missing_file", "1 of the 2 listed images are missing"),
    ("no_folder", "is not a folder. Give --data_dir=DIR"),
  ],
)
def test_bad_input_gets_a_clear_error(tmp_path, case, message):
  data = _make_folder(tmp_path / "d", classes=2, images=2)
  good = os.path.join(data, "c0", "0.png")
  target = data
  if case == "unreadable_image":
    (tmp_path / "d" / "c1" / "broken.png").write_bytes(b"not a png")
  elif case == "empty_class_folder":
    (tmp_path / "d" / "empty").mkdir()
  elif case == "missing_column":
    target = _write_csv(tmp_path / "l.csv", [(good, "a")], "path,class")
  elif case == "float_label":
    target = _write_csv(tmp_path / "l.csv", [(good, "3.0")])
  elif case == "empty_label":
    target = _write_csv(tmp_path / "l.csv", [(good, "a"), (good, " ")])
  elif case == "bad_split":
    target = _write_csv(
      tmp_path / "l.csv", [(good, 1, "val")], "path,label,split"
    )
  elif case == "missing_file":
    target = _write_csv(tmp_path / "l.csv", [(good, 1), ("gone.png", 1)])
  elif case == "no_folder":
    target = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=message):
    folder.read_listing(target)


def test_export_round_trips_npz_and_npy(tmp_path):
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(3, 4)).astype(np.float32)
  paths, labels = ["/a.png", "/b.png", "/c.png"], ["x", "7", "x"]
  for suffix in ("npz", "npy"):
    out = str(tmp_path / f"e.{suffix}")
    json_path = export.write_embeddings(
      out, embeddings, paths, labels, {"step": 5}
    )
    assert json_path == str(tmp_path / f"e.{suffix}.json")  # Never shared.
    got, got_paths, got_labels, meta = export.read_embeddings(out)
    np.testing.assert_array_equal(got, embeddings)
    assert (got_paths, got_labels) == (paths, labels)
    assert meta["step"] == 5 and meta["format"] == export.FORMAT
  with pytest.raises(ValueError, match="must end in .npz or .npy"):
    export.write_embeddings(
      str(tmp_path / "e.txt"), embeddings, paths, labels, {}
    )


def _run(args):
  return run_module(*args)


def _as_csv(tmp_path, data):
  """The folder as a CSV: c0..c3 train, c4..c8 test (the split column)."""
  listing = folder.read_folder(data)
  rows = [
    (os.path.relpath(p, tmp_path), c, "train" if c < "c4" else "test")
    for p, c in zip(listing.paths, listing.classes, strict=True)
  ]
  return _write_csv(tmp_path / "list.csv", rows, "path,label,split")


@pytest.mark.slow
@pytest.mark.parametrize("layout, suffix", [("folder", "npz"), ("csv", "npy")])
def test_train_export_query(tmp_path, layout, suffix):
  data = _make_folder(tmp_path / "d", classes=8)
  if layout == "csv":
    data = _as_csv(tmp_path, data)
  run = tmp_path / "run"
  result = _run(
    [
      "experiments.folder",
      "--config=margin_dw:smoke",
      f"--data_dir={data}",
      f"--workdir={run}",
      "--config.train.num_steps=2",
      "--config.data.batch_size=10",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # A warning (absl's log handler, on stderr).
  assert "left out 1 class(es) with a single image" in result.stderr
  summary = json.loads((run / "summary.json").read_text())
  assert summary["config"]["data"]["name"] == "folder"
  assert 0.0 <= summary["final"]["recall@1"] <= 1.0
  out = str(tmp_path / f"emb.{suffix}")
  result = _run(
    [
      "experiments.embed",
      f"--workdir={run}",
      f"--data_dir={data}",
      f"--out={out}",
      "--split=test",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  embeddings, paths, labels, meta = export.read_embeddings(out)
  # The test classes c4..c8 (csv) or 4 of the 9 drawn (folder), with every
  # image, the single one of c8 too when its class is in test.
  test_classes = sorted(set(labels))
  assert len(test_classes) == (5 if layout == "csv" else 4)
  assert embeddings.shape == (4 * len(test_classes) - ("c8" in labels) * 3, 16)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, rtol=1e-5)
  assert meta["step"] == 2 and meta["workdir"] == str(run)
  assert meta["preprocess"]["crop"] == 32 and meta["model"]["name"] == "small"
  query = paths[1]
  sheet = tmp_path / "sheet.png"
  result = _run(
    [
      "experiments.query",
      f"--embeddings={out}",
      f"--image={query}",
      "--k=3",
      f"--sheet={sheet}",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  first = result.stdout.splitlines()[1].split()  # The query leaves itself out.
  assert first[0] == "1" and first[3] in paths and first[3] != query
  width, height = Image.open(sheet).size
  assert width > 3 * height  # One row: the query and its 3 neighbours.
