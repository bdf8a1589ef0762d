"""A convolutional VAE on the embedded `digits` dataset: CPU-sized, no download needed.

A VAE (Kingma & Welling 2014) with a convolutional encoder/decoder, a 16-dimensional
Gaussian latent and a discretized logistic decoder over the 256 levels of each
sub-pixel, on scikit-learn's 8x8 handwritten digits at native size. The KL weight is
warmed up linearly over the first 500 steps. It reproduces no paper number; the
test-set bits/dim of the ELBO and of the importance-weighted bound (Burda et al. 2016)
with k=1000 are written to workdir/eval/.

  python main.py --config=configs/vae_digits.py --workdir=/tmp/vae_digits
  tensorboard --logdir=/tmp/vae_digits/tensorboard
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.name = "vae_digits"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False

  model = config.model
  model.family = "vae"
  model.architecture = "conv"         # conv | mlp (models/vae.py)
  model.ch = 32                       # base channel count of the conv networks
  model.ch_mult = (1, 2)              # channel multiplier per level; 8x8 -> 2x2
  model.hidden_sizes = (200, 200)     # mlp only
  model.latent_dim = 16
  # bernoulli | gaussian | discretized_logistic (| logistic_mixture, when available)
  model.decoder = "discretized_logistic"
  model.binarization = "dynamic"      # bernoulli only: dynamic | threshold | binary
  model.learned_scale = True          # gaussian only: learn the scale per sub-pixel ...
  model.fixed_scale = 0.1             # ... or use this one (in [-1, 1] pixel units)
  model.num_mixtures = 5              # logistic_mixture only
  model.beta = 1.0                    # weight of the KL term (beta-VAE; 1 = the ELBO)
  model.kl_warmup_steps = 500         # KL weight rises linearly from 0; 0 = no warm-up
  model.free_bits = 0.0               # minimum KL in nats per latent dim (0 = off)
  model.train_samples = 1             # k > 1 trains the IWAE bound L_k instead
  # Unused by the VAE, kept so that shared overrides (model.num_groups=4) apply.
  model.num_groups = 8

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 0.0
  config.optim.ema_decay = 0.999

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 3000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 1500
  training.num_samples_in_grid = 64

  config.sampling.use_ema = True
  config.sampling.batch_size = 256
  config.sampling.decoder_output = "mean"   # mean | sample: what images show
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.eval.iwae_samples = 1000     # k of the importance-weighted bound
  config.eval.iwae_chunk = 100        # samples per compiled chunk (memory vs speed)

  if arg == "runlocal":   # a seconds-long smoke test
    training.num_train_steps = 20
    training.log_every_steps = 10
    training.checkpoint_every_steps = 10
    training.sample_every_steps = 20
    training.num_samples_in_grid = 4
    model.ch = 8
    model.kl_warmup_steps = 10
    config.eval.num_samples = 8
    config.eval.num_eval_examples = 32
    config.eval.batch_size = 32
    config.eval.iwae_samples = 20
    config.eval.iwae_chunk = 10
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'runlocal'.")
  return config
