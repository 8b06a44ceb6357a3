"""Train and evaluate an embedding on In-Shop Clothes Retrieval.

3,997 train items; each of the 14,218 query images is retrieved among the
12,612 gallery images (Recall@1/10/20/30/40). Batch 80, ResNet-50.

  python -m experiments.inshop --config=margin_dw --data_dir=/data/inshop
  python -m experiments.inshop --config=margin_dw --data_dir=/data/inshop \\
    --config.model.pretrained=resnet50.safetensors \\
    --config.model.dtype=bfloat16

The data layout and where to get it: dmljax/data/inshop.py.
"""

from absl import flags

from experiments import _cli

_cli.define_data_flags()
flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="inshop")
