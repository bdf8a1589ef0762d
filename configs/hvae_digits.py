"""A VDVAE-style hierarchical VAE on the embedded `digits` dataset: CPU-sized, offline.

The architecture and training recipe of Child 2021 ("Very Deep VAEs", see
configs/vdvae_cifar.py) shrunk to scikit-learn's 8x8 handwritten digits at native
size: resolutions 8, 4, 2, 1, width 32, 4-channel latents in 9 top-down layers, a
3-component discretized logistic mixture, gradient clipping and update skipping as in
the paper. It reproduces no paper number; the test-set bits/dim of the ELBO is written
to workdir/eval/. Samples use temperature 1 (config.sampling.temperature).

  python main.py --config=configs/hvae_digits.py --workdir=/tmp/hvae_digits
  python main.py --config=configs/hvae_digits.py:runlocal --workdir=/tmp/hvae_smoke
  tensorboard --logdir=/tmp/hvae_digits/tensorboard
"""

from configs import default
from configs import vdvae_cifar


def get_config(arg: str | None = None):
  config = default.get_config()
  config.name = "hvae_digits"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False

  model = config.model
  model.family = "hvae"
  model.ch = 32                       # width of the residual stream
  # Unused by this family (no GroupNorm), kept so that shared overrides apply.
  model.num_groups = 8

  config.hvae = hvae = vdvae_cifar.hvae_defaults()
  hvae.enc_blocks = "8x2,8d2,4x2,4d2,2x1,2d2,1x1"   # 9 residual blocks
  hvae.dec_blocks = "1x1,2m1,2x1,4m2,4x2,8m4,8x2"   # 9 latent layers
  hvae.zdim = 4                       # latent channels per position
  hvae.bottleneck_multiple = 0.5      # 16 inner channels (VDVAE: 0.25 of 384)
  hvae.num_mixtures = 3
  hvae.grad_clip = 200.0              # VDVAE's, in nats/dim gradient units
  hvae.skip_threshold = 400.0
  hvae.input_mean = 127.5             # encoder input in [-1, 1]
  hvae.input_std = 127.5

  optim = config.optim
  optim.optimizer = "adamw"
  optim.learning_rate = 1e-3          # higher than VDVAE's 2e-4: a small, short run
  optim.warmup_steps = 100
  optim.lr_schedule = "constant"
  optim.beta1 = 0.9
  optim.beta2 = 0.9                   # as VDVAE
  optim.weight_decay = 0.01
  optim.grad_clip_norm = 0.0          # clipping is the family's (config.hvae.grad_clip)
  optim.ema_decay = 0.995             # short run: a 200-step averaging window

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 4000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 2000
  training.num_samples_in_grid = 64
  # Skipped updates keep NaNs out of the weights (see configs/vdvae_cifar.py).
  training.halt_on_nonfinite = False

  config.sampling.temperature = 1.0   # scales every prior's standard deviation
  config.sampling.use_ema = True
  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.eval.iwae_samples = 1000     # k of the importance-weighted bound (0: ELBO only)
  config.eval.iwae_chunk = 20         # draws per decoder call (memory: 20 x 360 images)

  if arg == "runlocal":   # a seconds-long smoke test
    model.ch = 8
    hvae.enc_blocks = "8d2,4d4"       # two blocks: activations at 8, 4 and 1
    hvae.dec_blocks = "1x1,4m1,8m4"   # three latent layers
    training.batch_size = 16
    training.num_train_steps = 20
    training.log_every_steps = 10
    training.checkpoint_every_steps = 10
    training.sample_every_steps = 20
    training.num_samples_in_grid = 4
    config.eval.num_samples = 8
    config.eval.num_eval_examples = 32
    config.eval.batch_size = 32
    config.eval.iwae_samples = 4
    config.eval.iwae_chunk = 2
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'runlocal'.")
  return config
