"""The kit the repository's own DNN folders are built with; not part of the weightsep package.

The wheel ships `weightsep` alone (pyproject.toml's [tool.setuptools] packages); these modules stay
in the repository, beside the folders that use them, with the data-preparation packages they need
(requirements.txt, prepare_data.sh):

* `datasets`: read installed sources, split, standardise, build a folder's .npz (`prepare_npz`);
  the .npz format itself (written aligned, read memory-mapped) is weightsep.prepared
* `glyphs`, `audio`: the synthetic images and rendered sounds of suite/syndigits, signs, keywords
  and instruments
* `paper`, `checkpoint`, `originals`: the ten paper DNN folders' shared facts and data, the authors'
  TF checkpoints read without TensorFlow, the NWV authors' pickled arrays (tests and benchmarks)

Imported from the repository root (as `weightsep` is when run from it), e.g. `from dnnkit import datasets`.
"""
