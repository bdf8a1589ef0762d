"""DDPM on the embedded `digits` dataset: the laptop default, no download needed.

A small DDPM (Ho et al. 2020: the same objective, schedule and sampler as
configs/ddpm_cifar.py, with a smaller U-Net and fewer steps) on scikit-learn's real
8x8 handwritten digits at their native size. It trains on 2 CPU cores in under 10 minutes
and leaves recognisable digits in workdir/samples/, TensorBoard logs in
workdir/tensorboard/, checkpoints in workdir/checkpoints/ and the test-set bits/dim
(variational bound) in workdir/eval/. It reproduces no paper number. Its settings are
configs/ddpm_base.py's (U-Net ch=32, T=250 with the linear schedule stretched, batch
64, 2,500 steps), which document them.

  python main.py --config=configs/ddpm_digits.py --workdir=/tmp/ddpm_digits
  tensorboard --logdir=/tmp/ddpm_digits/tensorboard
"""

from configs import config_args
from configs import ddpm_base


def get_config(arg: str | None = None):
  config_args.parse(arg, "configs/ddpm_digits.py")
  config = ddpm_base.get_config(arg)
  config.name = "ddpm_digits"
  return config
