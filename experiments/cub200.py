"""Train and evaluate an embedding on CUB-200-2011.

Species 1–100 train (5,864 images), 101–200 test (5,924); Recall@1/2/4/8/16,
NMI. Batch 128, ResNet-50; images scaled and padded to a longer side of 256,
224 px crops; --config.data.cropped=True cuts the birds out first.

  python -m experiments.cub200 --config=margin_dw --data_dir=/data/cub
  python -m experiments.cub200 --config=margin_dw --data_dir=/data/cub \\
    --config.model.pretrained=resnet50.safetensors --config.data.cropped=True \\
    --config.model.dtype=bfloat16

The data layout and where to get it: dmljax/data/cub200.py.
"""

from absl import flags

from experiments import _cli

_cli.define_data_flags()
flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="cub200")
