"""A small DCGAN on the embedded `digits` dataset: CPU-sized, no download needed.

DCGAN-style networks (Radford et al. 2016) for 8x8 images: G maps a 32-d Gaussian
latent to 2x2x128, then transposed convs to 4x4x64 and to the 8x8 image (batch norm,
ReLU, tanh); D has two stride-2 convs (64, 128; LeakyReLU 0.2, batch norm on the
second) and a linear output. Non-saturating loss, Adam 2e-4 with betas (0.5, 0.999),
batch 64, 3000 steps; samples come from an EMA of the generator (decay 0.999) with
batch-norm running averages. On scikit-learn's 1,442 training digits it leaves
recognisable digits in workdir/samples/ after a few minutes on 2 CPU cores (about 10
minutes on a heavily shared machine). It reproduces no paper number.

  python main.py --config=configs/gan_digits.py --workdir=/tmp/gan_digits
  tensorboard --logdir=/tmp/gan_digits/tensorboard
"""

from configs import config_args, gan_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/gan_digits.py")
  config = gan_base.get_config()
  config.name = "gan_digits"
  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False     # digits are not mirror-symmetric

  model = config.model
  model.architecture = "dcgan"
  model.ch, model.ch_mult = 32, (4, 2)          # 128@2x2 -> 64@4x4 -> image
  model.d_ch, model.d_ch_mult = 32, (2, 4)      # 64@4x4 -> 128@2x2
  model.z_dim = 32
  model.z_distribution = "normal"
  model.init = "normal_0.02"

  config.gan.loss = "non_saturating"
  config.gan.n_critic = 1

  optim = config.optim
  optim.learning_rate = 2e-4
  optim.beta1, optim.beta2 = 0.5, 0.999
  optim.ema_decay = 0.999
  config.sampling.use_ema = True

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 3000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 1500
  training.sample_every_steps = 1500
  training.num_samples_in_grid = 64
  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360

  if config_args.RUNLOCAL in args:   # a seconds-long smoke test
    config_args.runlocal(config, num_train_steps=4, every=2)
  return config
