"""Train and evaluate an embedding on your own images: a folder or a CSV.

--data_dir is either a folder with one sub-folder of images per class
(DIR/<class>/<image>) or a .csv/.tsv file with the columns
path,label[,split] (dmljax/data/folder.py). By default half of the classes,
drawn with data.split_seed, are held out for testing (Recall@k on classes
never seen in training); a CSV split column, data.test_classes or
data.split=instances choose otherwise. Defaults are CPU-sized: 64 px crops
of 72 × 72 RGB images, the small net, 1,000 steps.

  python -m experiments.folder --config=margin_dw --data_dir=DIR \\
    --workdir=runs/mine
  python -m experiments.folder --config=margin_dw --data_dir=list.csv \\
    --config.model.name=resnet50 --config.data.image_size=224 \\
    --config.data.resize_size=256 \\
    --config.model.pretrained=resnet50.safetensors

Then: python -m experiments.embed --workdir=runs/mine --data_dir=DIR
--out=emb.npz, and python -m experiments.query --embeddings=emb.npz
--image=IMG.
"""

from absl import flags

from experiments import _cli

_cli.define_data_flags(data_source=False)
flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="folder")
