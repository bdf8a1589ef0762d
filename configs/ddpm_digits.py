"""DDPM on the embedded `digits` dataset: the laptop default, no download needed.

A small DDPM (Ho et al. 2020: the same objective, schedule and sampler as
configs/ddpm_cifar.py, with a smaller U-Net and fewer steps) on scikit-learn's real
8x8 handwritten digits at their native size. It trains on 2 CPU cores in under 10 minutes
and leaves recognisable digits in workdir/samples/, TensorBoard logs in
workdir/tensorboard/, checkpoints in workdir/checkpoints/ and the test-set bits/dim
(variational bound) in workdir/eval/. It reproduces no paper number.

  python main.py --config=configs/ddpm_digits.py --workdir=/tmp/ddpm_digits
  tensorboard --logdir=/tmp/ddpm_digits/tensorboard
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.name = "ddpm_digits"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8 (the default)
  config.data.random_flip = False     # digits are not mirror-symmetric

  model = config.model
  model.ch = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.num_groups = 8

  # T=250 with the paper's linear schedule stretched to keep the same total noise
  # (beta_T * T constant): sampling and the T-term bound cost a quarter of T=1000.
  config.diffusion.num_timesteps = 250
  config.diffusion.beta_schedule = "linear"
  config.diffusion.beta_start = 4e-4
  config.diffusion.beta_end = 0.08

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200
  config.optim.ema_decay = 0.999

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 2500
  training.log_every_steps = 100
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 1250
  training.num_samples_in_grid = 64

  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.eval.vlb_timestep_chunk = 25

  if arg == "runlocal":   # a seconds-long smoke test
    training.num_train_steps = 20
    training.log_every_steps = 10
    training.checkpoint_every_steps = 10
    training.sample_every_steps = 20
    training.num_samples_in_grid = 4
    config.diffusion.num_timesteps = 20
    config.eval.num_samples = 8
    config.eval.num_eval_examples = 32
    config.eval.batch_size = 32
    config.eval.vlb_timestep_chunk = 10
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'runlocal'.")
  return config
