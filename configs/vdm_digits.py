"""VDM on the embedded `digits` dataset: the variational diffusion model on a laptop CPU.

Kingma et al. 2021 ("Variational Diffusion Models") with the objective, learned
schedule and sampler of configs/vdm_cifar.py and a small score U-Net (no downsampling,
32 channels, 4 blocks) on scikit-learn's real 8x8 digits at their native size. It
trains on 2 CPU cores in minutes and leaves digit samples in workdir/samples/ and the
test-set bits/dim (variational bound, `bpd_vlb`) in workdir/eval/. It reproduces no
paper number.

  python main.py --config=configs/vdm_digits.py --workdir=/tmp/vdm_digits
  python main.py --config=configs/vdm_digits.py:runlocal --workdir=/tmp/vdm_smoke
"""

from configs import config_args, vdm_cifar


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/vdm_digits.py")
  config = vdm_cifar.get_config()
  config.name = "vdm_digits"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False     # digits are not mirror-symmetric

  model = config.model
  model.ch = 32
  model.num_res_blocks = 4
  model.dropout = 0.0
  model.num_groups = 8

  config.vdm.schedule_num_features = 64   # a smaller monotone network suffices

  optim = config.optim
  optim.learning_rate = 1e-3
  optim.warmup_steps = 100
  optim.weight_decay = 0.0
  optim.ema_decay = 0.999

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 3000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 1500
  training.keep_checkpoint_every_steps = 0
  training.num_samples_in_grid = 64

  config.sampling.num_steps = 250
  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.vdm.eval_num_times = 8       # a less noisy bound on the small test split

  if config_args.RUNLOCAL in args:   # a seconds-long smoke test
    config_args.runlocal(config)
    model.ch = 16
    model.num_res_blocks = 2
    model.num_groups = 4
    config.vdm.schedule_num_features = 16
    config.sampling.num_steps = 20
    config.vdm.eval_num_times = 2
  return config
