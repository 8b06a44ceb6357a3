"""DE-DSP's timing setting: one negative for an (anchor, positive) pair.

The paper (Sec. 4.4): choosing a negative among 100 classes × 100 images
took 4.3 s by exhaustive search through the embedding network and 0.016 s
with the deep sampler network, on their GPU. Here, with 32 × 32 grayscale
images (the glyphs setting) on this machine:

* exhaustive: embed all C·M candidates with the embedding network
  (SmallConvNet + 128-d head), then the semi-hard rule (eq. 3) on the
  anchor's distances;
* dsn: the sampler network's trunk over all candidates (class summaries),
  then its class and negative heads — what `dmljax.dsp.selection` runs;
* dsn_cached_summaries: the class summaries kept from earlier steps, so only
  the chosen class's M candidates go through the trunk.

Each: jit-compiled, then the median of --repeats calls. Table + JSON.

  python -m experiments.bench_dsp [--classes=100 --images_per_class=100]
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from dmljax import models
from dmljax.dsp import network as network_lib
from dmljax.dsp import policy

_CLASSES = flags.DEFINE_integer("classes", 100, "Candidate classes C.")
_PER_CLASS = flags.DEFINE_integer("images_per_class", 100, "Images M.")
_SIZE = flags.DEFINE_integer("image_size", 32, "H = W.")
_CHUNK = flags.DEFINE_integer("chunk", 1000, "Images per embedding call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls.")
_OUT = flags.DEFINE_string("out", "bench_results/bench_dsp.json", "JSON.")


def _timed(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # Compile.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _exhaustive_search(size: int, per_class: int):
  """(search, variables): the semi-hard negative by embedding every image.

  search(variables, images, anchor, positive) embeds the candidates in
  chunks of --chunk with the embedding network (SmallConvNet + 128-d head)
  and applies the semi-hard rule (eq. 3) to the anchor's distances; the
  first `per_class` candidates are the anchor's class.
  """
  model = models.make_embedder("small", embedding_dim=128)
  variables = models.init_embedder(model, jax.random.key(0), (2, size, size))

  @jax.jit
  def search(variables, images, anchor, positive):
    count = images.shape[0]
    chunks = images.reshape(-1, _CHUNK.value, size, size, 1)
    embed = lambda x: model.apply(variables, x, train=False)  # noqa: E731
    candidates = jax.lax.map(embed, chunks).reshape(count, -1)
    a, p = embed(anchor)[0], embed(positive)[0]
    d_ap = jnp.linalg.norm(a - p)
    d_an = jnp.linalg.norm(candidates - a, axis=1)
    other = jnp.arange(count) >= per_class  # Not the anchor's class.
    semihard = other & (d_an > d_ap)
    return jnp.argmin(jnp.where(semihard, d_an, jnp.inf))

  return search, variables


def _sampler_network_searches(size: int, classes: int, per_class: int):
  """(dsn, dsn_cached, features): the deep sampler network's two ways.

  dsn(key, images, anchor, positive) runs the trunk over every candidate
  (class summaries), then the class and negative heads;
  dsn_cached(key, summaries, images, anchor, positive) is given the class
  summaries and runs the trunk over the chosen class only. `features` is
  the summaries' width.
  """
  network = network_lib.DeepSamplerNetwork()
  params = network_lib.init_sampler(network, jax.random.key(1), (size, size, 1))
  apply = lambda method, *args: network.apply(  # noqa: E731
    {"params": params}, *args, method=method
  )
  net = network_lib.DeepSamplerNetwork

  def negative_of_class(key, a, p, class_images, anchor_class):
    candidates = apply(net.features_of, class_images)[None]
    logits = apply(net.negative_logits, a, p, candidates)
    index, _, _ = policy.sample(key, logits, jnp.ones(logits.shape, bool))
    return index

  def negative(key, summaries, images, anchor, positive):
    """The class head over `summaries`, the negative head over its choice."""
    a, p = apply(net.features_of, anchor), apply(net.features_of, positive)
    logits = apply(net.class_logits, a, summaries)
    mask = jnp.arange(classes)[None] != 0
    chosen, _, _ = policy.sample(key, logits, mask)
    class_images = jax.lax.dynamic_slice_in_dim(
      images, chosen[0] * per_class, per_class
    )
    return negative_of_class(key, a, p, class_images, 0)

  @jax.jit
  def dsn(key, images, anchor, positive):
    features = apply(net.features_of, images).reshape(classes, per_class, -1)
    summaries = jnp.mean(features, axis=1)[None]
    return negative(key, summaries, images, anchor, positive)

  return dsn, jax.jit(negative), network.features


def _report(rows: dict[str, float], classes: int, per_class: int, size: int):
  """Prints the table (speed-up over exhaustive) and writes the JSON --out."""
  print(
    f"One negative among {classes} classes × {per_class} images "
    f"({size} × {size}), {jax.devices()[0].platform}:"
  )
  print(f"{'method':>22} {'seconds':>9} {'speed-up':>9}")
  for name, seconds in rows.items():
    print(f"{name:>22} {seconds:>9.4f} {rows['exhaustive'] / seconds:>8.1f}×")
  print("Paper (GPU, their nets): exhaustive 4.3 s, DSN 0.016 s (269×).")
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(
      dict(
        classes=classes,
        images_per_class=per_class,
        image_size=size,
        platform=jax.devices()[0].platform,
        host=platform.node(),
        cpu_count=os.cpu_count(),
        seconds=rows,
        paper_seconds={"exhaustive": 4.3, "dsn": 0.016},
      ),
      f,
      indent=2,
    )
  print(f"JSON: {_OUT.value}")


def main(argv):
  del argv
  classes, per_class, size = _CLASSES.value, _PER_CLASS.value, _SIZE.value
  count = classes * per_class
  if count % _CHUNK.value:
    raise app.UsageError("classes × images_per_class must divide by --chunk.")
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((count, size, size, 1), np.float32))
  anchor, positive = images[:1], images[1:2]
  exhaustive, variables = _exhaustive_search(size, per_class)
  dsn, dsn_cached, features = _sampler_network_searches(
    size, classes, per_class
  )
  key = jax.random.key(2)
  summaries = jnp.zeros((1, classes, features))
  rows = {
    "exhaustive": _timed(exhaustive, variables, images, anchor, positive),
    "dsn": _timed(dsn, key, images, anchor, positive),
    "dsn_cached_summaries": _timed(
      dsn_cached, key, summaries, images, anchor, positive
    ),
  }
  _report(rows, classes, per_class, size)


if __name__ == "__main__":
  app.run(main)
