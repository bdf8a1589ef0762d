"""SNGAN on unconditional CIFAR-10: Miyato et al. 2018, "Spectral Normalization for
Generative Adversarial Networks". Two variants, chosen by the config argument:

- 'resnet' (default): Table 2, SN-GANs (ResNet): FID 21.7, Inception score 8.22.
  Settings from the authors' code (pfnet-research/sngan_projection,
  configs/sn_cifar10_unconditional.yml and updater.py, checked): ResNet G with 256
  channels and D with 128 channels (Table 4: three up-sampling blocks; D: two
  down-sampling then two plain blocks, global sum pooling), spectral norm in D only,
  hinge loss (eq. 17), n_dis = 5 D updates per G update on fresh batches of 64 (so
  batch_size = 5 * 64), 128 latents per G update, Adam lr 2e-4, betas (0, 0.9), decayed
  linearly to 0 over 50k generator updates; z ~ N(0, I) of size 128; Glorot-uniform
  init (gain sqrt(2) on residual convs).
- 'cnn': Table 2, SN-GANs (standard CNN): FID 29.3, Inception score 7.42. Table 3
  networks (G: dense to 4x4x512, three 4x4 stride-2 deconvs with BN and ReLU to
  256/128/64, a 3x3 conv and tanh; D: 3x3 / 4x4-stride-2 conv pairs of 64, 128, 256
  channels, a 3x3 conv of 512, LeakyReLU 0.1, spectral norm), optimization setting B
  of Table 1 (Adam lr 1e-4, betas (0.5, 0.999), n_dis = 1), batch 64, the
  non-saturating loss, 100k generator updates. NOT verified against the paper text
  with the search tools available here: that the 7.42 row used setting B and the
  non-saturating (not the hinge) loss, the 100k updates and the N(0, 0.02) init.

  python main.py --config=configs/sngan_cifar.py --workdir=runs/sngan_resnet
  python main.py --config=configs/sngan_cifar.py:cnn --workdir=runs/sngan_cnn

Append ',runlocal' to the argument (or use 'runlocal' alone) for a smoke test.
"""

from configs import config_args, gan_base

VARIANTS = ("resnet", "cnn")


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/sngan_cifar.py", choices=VARIANTS,
                           exclusive=(VARIANTS,))
  variant = "cnn" if "cnn" in args else "resnet"
  config = gan_base.get_config()
  config.name = f"sngan_{variant}_cifar"
  config.data.dataset = "cifar10"
  config.data.image_size = None
  config.data.random_flip = False

  model, gan, optim, training = config.model, config.gan, config.optim, config.training
  model.z_dim = 128
  model.g_spectral_norm, model.d_spectral_norm = False, True
  optim.optimizer = "adam"
  if variant == "resnet":
    model.architecture = "resnet"
    model.ch, model.ch_mult = 256, (1, 1, 1)
    model.d_ch, model.d_ch_mult = 128, (1, 1, 1, 1)
    model.d_downsample = (True, True, False, False)
    model.d_pooling = "sum"
    model.init = "glorot"
    gan.loss = "hinge"
    gan.n_critic = 5
    gan.g_batch_size = 128
    optim.learning_rate = 2e-4
    optim.beta1, optim.beta2 = 0.0, 0.9
    optim.lr_schedule = "linear"
    optim.lr_decay_steps = 50_000
    training.batch_size = 5 * 64
    training.num_train_steps = 50_000
  else:
    model.architecture = "sngan_cnn"
    model.ch, model.ch_mult = 64, (8, 4, 2, 1)
    model.d_ch, model.d_ch_mult = 64, (1, 2, 4, 8)
    model.init = "normal_0.02"
    gan.loss = "non_saturating"
    gan.n_critic = 1
    optim.learning_rate = 1e-4
    optim.beta1, optim.beta2 = 0.5, 0.999
    optim.lr_schedule = "constant"
    training.batch_size = 64
    training.num_train_steps = 100_000
  config.sampling.use_ema = False
  training.log_every_steps = 100
  training.checkpoint_every_steps = 5000
  training.sample_every_steps = 10_000
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=10, eval_examples=16)
    training.log_every_steps = 5
    model.ch = model.d_ch = 8
    gan.g_batch_size = 4 if gan.g_batch_size else 0
    training.batch_size = gan.n_critic * 2
    config.eval.num_samples = 16
  return config
