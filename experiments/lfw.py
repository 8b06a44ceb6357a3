"""Train and evaluate an embedding on CASIA-WebFace, evaluated on LFW.

Train on CASIA-WebFace (10,575 identities) with the slim face ResNet-50
(batch 200), evaluate LFW verification: 10 folds of 600 pairs, each fold's
threshold chosen on the other nine. --config.model.embedding_dim=256 for the
256-d variant.

  python -m experiments.lfw --config=margin_dw --data_dir=/data/faces
  python -m experiments.lfw --config=margin_dw --data_dir=/data/faces \\
    --config.model.pretrained=resnet50.safetensors \\
    --config.model.dtype=bfloat16

The data layout and where to get it: dmljax/data/faces.py.
"""

from absl import flags

from experiments import _cli

_cli.define_data_flags()
flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="lfw")
