"""The hierarchical VAE family's base config: configs/default.py plus every field that
train/hvae.py reads, each at its default and explained.

The family is a very deep top-down VAE (Child 2021, "VDVAE"; models/hvae.py): one
latent layer per decoder block, a discretized logistic mixture over the pixels,
trained on the negative ELBO with VDVAE's gradient clipping and update skipping,
evaluated with the ELBO and optionally the importance-weighted bound.

`get_config()` is itself a runnable small config: VDVAE's recipe shrunk to the
embedded 8x8 `digits` (CPU, no download), the settings of configs/hvae_digits.py.
Experiment configs (hvae_digits.py, vdvae_cifar.py) start from it and set what their
paper sets.

  python main.py --config=configs/hvae_base.py --workdir=/tmp/hvae_base
  python main.py --config=configs/hvae_base.py:runlocal --workdir=/tmp/hvae_smoke
"""

import ml_collections

from configs import config_args
from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/hvae_base.py")
  config = default.get_config()
  config.name = "hvae_base"           # data: default.py's digits, native 8x8, no flips

  config.model.family = "hvae"
  config.model.ch = 32                # VDVAE's `width`: channels of the residual stream

  config.hvae = hvae = ml_collections.ConfigDict()
  # Block specs (models/hvae.py): 'RxN' N residual blocks at resolution R, 'RdK' a
  # block then average pooling by K (encoder), 'RmS' a block that first adds the
  # upsampled state of resolution S (decoder). One latent layer per decoder block.
  hvae.enc_blocks = "8x2,8d2,4x2,4d2,2x1,2d2,1x1"   # 9 residual blocks
  hvae.dec_blocks = "1x1,2m1,2x1,4m2,4x2,8m4,8x2"   # 9 latent layers
  hvae.zdim = 4                       # latent channels per position of every layer
  # Inner width of each block / model.ch: 16 inner channels (VDVAE: 0.25 of 384).
  hvae.bottleneck_multiple = 0.5
  hvae.num_mixtures = 3               # discretized logistic mixture components
  # Clip the gradient (of the bound in nats per dimension, VDVAE's unit) to this global
  # norm. The family clips inside its step: optim.grad_clip_norm must be 0.
  hvae.grad_clip = 200.0
  # Skip the whole update when the gradient norm (before clipping) reaches this;
  # non-finite losses or norms always skip. <= 0 disables the norm test.
  hvae.skip_threshold = 400.0
  # Encoder input (x - input_mean) / input_std, x in [0, 255] (VDVAE: the training
  # set's statistics). The likelihood is always of x scaled to [-1, 1].
  hvae.input_mean = 127.5
  hvae.input_std = 127.5

  optim = config.optim
  optim.optimizer = "adamw"
  optim.learning_rate = 1e-3          # higher than VDVAE's 2e-4: a small, short run
  optim.warmup_steps = 100
  optim.beta2 = 0.9                   # as VDVAE
  optim.weight_decay = 0.01
  optim.grad_clip_norm = 0.0          # clipping is the family's (config.hvae.grad_clip)
  optim.ema_decay = 0.995             # short run: a 200-step averaging window

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 4000
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 2000
  # Skipped updates keep NaNs out of the weights; a NaN loss on a skipped step is
  # counted in the 'skipped' metric rather than stopping the run.
  training.halt_on_nonfinite = False

  config.sampling.temperature = 1.0   # scales every prior's standard deviation (> 0)
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  # k of the importance-weighted bound 'bpd_iwae' (0: the ELBO only), and draws per
  # decoder call (memory: iwae_chunk x eval.batch_size images); k a multiple of it.
  config.eval.iwae_samples = 1000
  config.eval.iwae_chunk = 20

  if "runlocal" in args:
    config_args.runlocal(config)
    config.model.ch = 8
    hvae.enc_blocks = "8d2,4d4"       # two blocks: activations at 8, 4 and 1
    hvae.dec_blocks = "1x1,4m1,8m4"   # three latent layers
    training.batch_size = 16
    config.eval.iwae_samples = 4
    config.eval.iwae_chunk = 2
  return config
