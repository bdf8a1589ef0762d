"""PixelCNN++ on the embedded `digits` dataset: CPU-sized, no download needed.

A small PixelCNN++ (Salimans et al. 2017: the network, discretized logistic mixture
likelihood, optimiser and Polyak averaging of configs/pixelcnnpp_cifar.py, with fewer
and narrower layers and a faster-decaying learning rate) on scikit-learn's 8x8
handwritten digits at native size, one grey channel (3 parameters per mixture
component), three resolution levels 8, 4, 2. It writes the test set's exact bits/dim
(`bpd`) to workdir/eval/ and naive (pixel-by-pixel: 64 network evaluations) samples to
workdir/samples/: recognisable digits, and 3.53 bits/dim after the 3000 steps (EMA
parameters, with the exponential learning-rate decay below; 0.2 CPU-seconds per step,
an estimated 10 minutes on 2 otherwise idle cores). It reproduces no paper number.

  python main.py --config=configs/pixelcnnpp_digits.py --workdir=/tmp/pixelcnnpp_digits
  tensorboard --logdir=/tmp/pixelcnnpp_digits/tensorboard
"""

from configs import autoregressive_base
from configs import config_args


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/pixelcnnpp_digits.py")
  config = autoregressive_base.get_config()
  config.name = "pixelcnnpp_digits"

  model = config.model
  model.name = "pixelcnnpp"
  model.likelihood = "logistic_mixture"
  model.conditional = False
  model.ch = 32                       # nr_filters (paper's CIFAR: 160)
  # The network's own name for the width, kept equal to ch (a reference: overriding
  # either changes both).
  model.nr_filters = model.get_ref("ch")
  model.nr_resnet = 1                 # gated ResNet blocks per level (paper: 5)
  model.nr_logistic_mix = 5           # (paper: 10)
  model.dropout = 0.5                 # as in the paper: 1.4k training images overfit

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 2e-3
  # lr(step) = 2e-3 * 0.9995**step: the paper's exponential per-step decay, faster
  # (to 0.22x at the last step); see configs/pixelcnnpp_cifar.py.
  optim.lr_schedule = "exponential"
  optim.lr_decay_rate = 0.9995
  optim.warmup_steps = 0
  optim.beta1 = 0.95
  optim.beta2 = 0.9995
  optim.grad_clip_norm = 0.0
  optim.ema_decay = 0.999

  # Batches of 64 digits, naive sampling and evaluation: the base's.
  training = config.training
  training.num_train_steps = 3000
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 1500

  if "runlocal" in args:
    config_args.runlocal(config)
    model.ch = 8
    model.nr_logistic_mix = 2
  return config
