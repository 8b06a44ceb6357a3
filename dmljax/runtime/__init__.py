"""The runtime: what drives the kernels through a run, config in hand.

The rest of `dmljax` is kernels (pure functions over arrays: distances,
labels, samplers, losses, beta, reductions, methods, metrics, models, dsp)
and input (`dmljax.data`). Here is the code that reads a config, a run
directory or files and calls them:

  train.py          train_and_evaluate: the loop for any recipe
  recipes/          ways of training (P × K methods, DE-DSP), one file each
  evaluation.py     embed a held-out split over the run, its protocol
  checkpoint.py     Orbax state + the data iterator, atomic
  rundir.py         a run directory's layout, identity and resume rule
  runlock.py        one process per run directory
  config_checks.py  every config value checked before any work
  divergence.py     a collapsed or non-finite run told and stopped
  reporting.py      metrics.jsonl, summary.json, progress, figures
  plots/            the end-of-run figures
  tensorboard.py    the optional TensorBoard mirror
  export.py         a run's network and embeddings of new images
  serving.py        a run's network as a jax.export artifact
  index.py          a gallery of embeddings and exact top-k search
  cpu_devices.py    one XLA:CPU device per core, before JAX starts

Nothing here is imported by `dmljax` itself: `import dmljax` stays the
kernels.
"""
