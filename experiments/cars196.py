"""Train and evaluate an embedding on CARS196.

Classes 1–98 train (8,054 images), 99–196 test (8,131); Recall@1/2/4/8/16,
NMI. Batch 128, ResNet-50, 224 px crops of 256 × 256; add
--config.data.cropped=True for the bounding-box-cropped variant.

  python -m experiments.cars196 --config=margin_dw --data_dir=/data/cars196
  python -m experiments.cars196 --config=margin_dw --data_dir=/data/cars196 \\
    --config.model.pretrained=resnet50.safetensors --config.data.cropped=True \\
    --config.model.dtype=bfloat16

The data layout and where to get it: dmljax/data/cars196.py.
"""

from absl import flags

from experiments import _cli

_cli.define_data_flags()
flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="cars196")
