"""Train and evaluate an embedding on Stanford Online Products.

Song et al.'s split: 11,318 products (59,551 images) train, 11,316
(60,502) test; Recall@1/10/100/1000, NMI. Paper defaults: ResNet-50, 224 px
crops of 256 × 256, batch 80 (P = 16 × K = 5), Adam, α = 0.2, β⁽⁰⁾ = 1.2.

  python -m experiments.sop --config=margin_dw --data_dir=/data/sop
  python -m experiments.sop --config=margin_dw --data_dir=/data/sop \\
    --config.model.pretrained=resnet50.safetensors \\
    --config.model.dtype=bfloat16

The data layout and where to get it: dmljax/data/sop.py.
"""

from absl import flags

from experiments import _cli

_cli.define_data_flags()
flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="sop")
