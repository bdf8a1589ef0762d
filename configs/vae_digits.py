"""A convolutional VAE on the embedded `digits` dataset: CPU-sized, no download needed.

A VAE (Kingma & Welling 2014) with a convolutional encoder/decoder, a 16-dimensional
Gaussian latent and a discretized logistic decoder over the 256 levels of each
sub-pixel, on scikit-learn's 8x8 handwritten digits at native size. The KL weight is
warmed up linearly over the first 500 steps. It reproduces no paper number; the
test-set bits/dim of the ELBO and of the importance-weighted bound (Burda et al. 2016)
with k=1000 are written to workdir/eval/. Its settings are the family's base
(configs/vae_base.py).

  python main.py --config=configs/vae_digits.py --workdir=/tmp/vae_digits
  tensorboard --logdir=/tmp/vae_digits/tensorboard
"""

from configs import config_args
from configs import vae_base


def get_config(arg: str | None = None):
  config_args.parse(arg, "configs/vae_digits.py")
  # The base is this model; its runlocal variant is this config's.
  config = vae_base.get_config(arg)
  config.name = "vae_digits"
  return config
