"""StyleGAN2 on class-conditional CIFAR-10, the StyleGAN2-ADA 'cifar' configuration
(Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data").

Target: conditional CIFAR-10 FID 2.42 (official StyleGAN2-ADA PyTorch release) / 2.67
(the paper's first arXiv version, its CIFAR-10 comparison table), both with ADA.
ADA itself (the adaptive augmentation pipeline) is NOT implemented here, so this config
trains the same network and optimisation without it;
`--config.gan.diffaugment=color,translation,cutout` adds DiffAugment instead (Zhao et
al. 2020), which is not what the 2.42 used.

Settings from the official code's cfg_specs['cifar'] and the cifar overrides in
train.py (NVlabs/stylegan2-ada-pytorch, checked): batch 64, minibatch-std group 32,
channels 512 at every resolution (fmaps 1: channel_base 32768, channel_max 512), a
2-layer mapping network (z_dim = w_dim = 512, lr multiplier 0.01), learning rate 0.0025
and Adam betas (0, 0.99), eps 1e-8, non-saturating loss, R1 gamma 0.01 applied lazily
every 16 D steps, no path-length regularisation, no style mixing, the 'orig' (not
residual) discriminator with an 8-layer class-embedding mapping, G EMA with a half-life
of 500k images and ramp-up 0.05, 100M images (1,562,500 steps of 64), no x-flips.
Lazy regularisation as in that code: G's Adam uses lr * 4/5 and betas ** (4/5)
(G_reg_interval 4, with its regularisation step empty since pl_weight = 0), D's uses
lr * 16/17 and betas ** (16/17) and takes an extra R1 step every 16 updates. Not
implemented: the float16 activation clamp (conv_clamp) and mixed precision.

  python main.py --config=configs/stylegan2_cifar.py --workdir=runs/stylegan2_cifar
  python main.py --config=configs/stylegan2_cifar.py --workdir=runs/stylegan2_cifar --mode=sample

`--config=configs/stylegan2_cifar.py:runlocal` shrinks everything for a smoke test.
"""

from configs import config_args, gan_base

LEARNING_RATE = 0.0025
BETA2 = 0.99
G_REG_RATIO = 4 / 5      # reg_interval / (reg_interval + 1) for G (interval 4)
D_REG_RATIO = 16 / 17    # and for D (interval 16)


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/stylegan2_cifar.py")
  config = gan_base.get_config()
  config.name = "stylegan2_cifar"
  config.data.dataset = "cifar10"
  config.data.image_size = None
  config.data.random_flip = False

  model = config.model
  model.architecture = "stylegan2"
  model.conditional = True
  model.ch, model.ch_mult = 512, (1, 1, 1, 1)       # sides 4, 8, 16, 32
  model.d_ch, model.d_ch_mult = 512, (1, 1, 1, 1)
  model.z_dim = 512
  model.w_dim = 512
  model.mapping_layers = 2
  model.d_mapping_layers = 8
  model.style_mixing_prob = 0.0
  model.d_architecture = "orig"
  model.mbstd_group_size = 32
  model.mbstd_num_features = 1

  gan = config.gan
  gan.loss = "non_saturating"
  gan.n_critic = 1
  gan.r1_gamma = 0.01
  gan.r1_every = 16
  gan.diffaugment = ""
  gan.ema_half_life_images = 500_000
  gan.ema_rampup = 0.05

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = LEARNING_RATE * G_REG_RATIO
  optim.beta1, optim.beta2 = 0.0, BETA2 ** G_REG_RATIO
  optim.eps = 1e-8
  optim.lr_schedule = "constant"
  gan.d_learning_rate = LEARNING_RATE * D_REG_RATIO
  gan.d_beta1, gan.d_beta2 = 0.0, BETA2 ** D_REG_RATIO
  config.sampling.use_ema = True
  config.sampling.truncation_psi = 1.0

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 100_000_000 // 64
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 50_000
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=10, eval_examples=16)
    training.log_every_steps = 5
    model.ch = model.d_ch = 8
    model.z_dim = model.w_dim = 16
    model.mbstd_group_size = 2
    training.batch_size = 4
    config.eval.num_samples = 16
  return config
