"""Train and evaluate an embedding on the embedded `glyphs` dataset.

2,320 Unicode characters rendered from matplotlib's fonts (12–21 fonts
each); train on the first half of the code points, test on the rest.

  python -m experiments.glyphs --config=margin_dw
  python -m experiments.glyphs --config=triplet_l2_semihard --workdir=/tmp/t
  python -m experiments.glyphs --config=margin_dw:smoke --print_config
"""

from absl import flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="glyphs")
