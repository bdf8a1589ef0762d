"""The VAE family's base config: configs/default.py plus every field that train/vae.py
reads, each at its default and explained.

The family is a Gaussian-latent VAE (Kingma & Welling 2014) with a choice of encoder
and decoder networks (models/vae.py) and of decoder likelihood, trained on the
(beta-weighted, warmed-up, free-bits) negative ELBO or the IWAE bound, and evaluated
with the ELBO and the importance-weighted bound (Burda et al. 2016).

`get_config()` is itself a runnable small config: a convolutional VAE with a
discretized logistic decoder on the embedded 8x8 `digits` (CPU, no download), the
settings of configs/vae_digits.py. Experiment configs (vae_digits.py,
vae_binarized_mnist.py) start from it and set what their paper sets.

  python main.py --config=configs/vae_base.py --workdir=/tmp/vae_base
  python main.py --config=configs/vae_base.py:runlocal --workdir=/tmp/vae_smoke
"""

import ml_collections

from configs import config_args
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/vae_base.py")
  config = default.get_config()
  config.name = "vae_base"            # data: default.py's digits, native 8x8, no flips

  model = config.model
  model.family = "vae"
  # Encoder and decoder networks (models/vae.py): conv (strided convolutions, one
  # halving per ch_mult entry) | mlp (fully connected tanh layers, hidden_sizes).
  model.architecture = "conv"
  model.ch = 32                       # conv: base channel count
  model.ch_mult = (1, 2)              # conv: channel multiplier per level; 8x8 -> 2x2
  model.hidden_sizes = (200, 200)     # mlp: widths of the deterministic layers
  model.latent_dim = 16               # dimensions of z ~ N(0, I)
  # p(x|z): bernoulli (binarized data) | gaussian (discretized to the 256 levels) |
  # discretized_logistic (one logistic per sub-pixel) | logistic_mixture (PixelCNN++'s
  # mixture per pixel). See train/vae.py.
  model.decoder = "discretized_logistic"
  # bernoulli only: how the uint8 images become bits inside the family: dynamic
  # (x ~ Bernoulli(pixel / 255) at every step) | threshold (x = [pixel >= 128]) |
  # binary (data stored as 0/1).
  model.binarization = "dynamic"
  model.learned_scale = True          # gaussian only: learn the scale per sub-pixel ...
  model.fixed_scale = 0.1             # ... or use this one (in [-1, 1] pixel units)
  model.num_mixtures = 5              # logistic_mixture only: components per pixel
  model.beta = 1.0                    # weight of the KL term (beta-VAE; 1 = the ELBO)
  model.kl_warmup_steps = 500         # KL weight rises linearly from 0; 0 = no warm-up
  model.free_bits = 0.0               # minimum KL in nats per latent dim (0 = off)
  # k > 1 trains the IWAE bound L_k instead of the ELBO (needs beta=1, no warm-up and
  # no free bits).
  model.train_samples = 1

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 0.0
  config.optim.ema_decay = 0.999

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 3000
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 1500

  # mean | sample: sample and reconstruction images show the decoder's mean (Bernoulli:
  # the probabilities as grey levels) or a draw from p(x|z). Mixtures are always drawn.
  config.sampling.decoder_output = "mean"
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.eval.iwae_samples = 1000     # k of the importance-weighted bound
  config.eval.iwae_chunk = 100        # samples per compiled chunk (memory vs speed)

  if "runlocal" in args:
    config_args.runlocal(config)
    model.ch = 8
    model.kl_warmup_steps = 10
    config.eval.iwae_samples = 20
    config.eval.iwae_chunk = 10
  return config
