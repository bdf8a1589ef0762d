"""A VDVAE-style hierarchical VAE on the embedded `digits` dataset: CPU-sized, offline.

The architecture and training recipe of Child 2021 ("Very Deep VAEs", see
configs/vdvae_cifar.py) shrunk to scikit-learn's 8x8 handwritten digits at native
size: resolutions 8, 4, 2, 1, width 32, 4-channel latents in 9 top-down layers, a
3-component discretized logistic mixture, gradient clipping and update skipping as in
the paper. It reproduces no paper number; the test-set bits/dim of the ELBO and of the
importance-weighted bound (k=1000) are written to workdir/eval/. Samples use
temperature 1 (config.sampling.temperature). Its settings are the family's base
(configs/hvae_base.py).

  python main.py --config=configs/hvae_digits.py --workdir=/tmp/hvae_digits
  python main.py --config=configs/hvae_digits.py:runlocal --workdir=/tmp/hvae_smoke
  tensorboard --logdir=/tmp/hvae_digits/tensorboard
"""

from configs import config_args
from configs import hvae_base


def get_config(arg: str | None = None):
  config_args.parse(arg, "configs/hvae_digits.py")
  # The base is this model; its runlocal variant is this config's.
  config = hvae_base.get_config(arg)
  config.name = "hvae_digits"
  return config
