"""WGAN-GP, ResNet, unconditional CIFAR-10: Gulrajani et al. 2017, "Improved Training
of Wasserstein GANs".

Reproduces Table 3 (unsupervised CIFAR-10): Inception score 7.86 +- 0.07 for the
ResNet WGAN-GP (the supervised 8.42 +- 0.10 uses an AC-GAN critic, not implemented here).
Hyperparameters as in the paper (section 5, appendix F) and its reference code
(igul222/improved_wgan_training, gan_cifar_resnet.py, checked): Wasserstein loss with
gradient penalty lambda = 10, n_critic = 5 critic updates per generator update, each on a
fresh real batch of 64 (so batch_size = 5 * 64), generator batch 128 (GEN_BS_MULTIPLE 2),
Adam lr 2e-4 with betas (0, 0.9) for both networks, decayed linearly to 0 over 100k
generator iterations; ResNet with 128 channels in G and D, batch norm in G only,
nearest up-sampling, mean-pool down-sampling, a mean-pooled critic output, z ~ N(0, I)
of size 128. Differences: the reference dequantizes real images with U[0, 1/128) noise
and scales by 2 (x/256 - 1/2); here images are x/127.5 - 1 without noise.

  python main.py --config=configs/wgangp_cifar.py --workdir=runs/wgangp_cifar
  python main.py --config=configs/wgangp_cifar.py --workdir=runs/wgangp_cifar --mode=sample

`--config=configs/wgangp_cifar.py:runlocal` shrinks everything for a smoke test.
"""

from configs import config_args, gan_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/wgangp_cifar.py")
  config = gan_base.get_config()
  config.name = "wgangp_cifar"
  config.data.dataset = "cifar10"
  config.data.image_size = None
  config.data.random_flip = False

  model = config.model
  model.architecture = "resnet"
  model.ch, model.ch_mult = 128, (1, 1, 1)
  model.d_ch, model.d_ch_mult = 128, (1, 1, 1, 1)
  model.d_downsample = (True, True, False, False)
  model.d_pooling = "mean"
  model.z_dim = 128
  model.init = "glorot"
  model.g_spectral_norm = model.d_spectral_norm = False
  model.conditional = False

  gan = config.gan
  gan.loss = "wasserstein"
  gan.gp_weight = 10.0
  gan.n_critic = 5
  gan.g_batch_size = 128

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 2e-4
  optim.beta1, optim.beta2 = 0.0, 0.9
  optim.lr_schedule = "linear"        # to 0 over lr_decay_steps generator steps
  optim.lr_decay_steps = 100_000
  config.sampling.use_ema = False

  training = config.training
  training.batch_size = 5 * 64
  training.num_train_steps = 100_000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 5000
  training.sample_every_steps = 10_000
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=10, eval_examples=16)
    training.log_every_steps = 5
    model.ch = model.d_ch = 8
    gan.g_batch_size = 4
    training.batch_size = 5 * 2
    config.eval.num_samples = 16
  return config
