"""The GAN family's base config (train/gan.py): a generator and a discriminator trained
against each other, for every architecture of models/gan.py and models/stylegan2.py.

This is the base: configs/default.py plus every field the GAN family reads, each with
its default and what it means. Experiment configs (dcgan_cifar.py, wgangp_cifar.py,
sngan_cifar.py, biggan_cifar.py, stylegan2_cifar.py, gan_toy.py, gan_digits.py) start
from `get_config()` and set what their paper sets. It is itself runnable: a small
unconditional DCGAN on the embedded 8x8 `digits` (CPU, no download); gan_digits.py
is the tuned version.

  python main.py --config=configs/gan_base.py --workdir=/tmp/gan_base

`--config=configs/gan_base.py:runlocal` is a seconds-long smoke test.

Batch size: each train step is n_critic discriminator updates and one generator
update; every D update takes a fresh real batch, so config.training.batch_size is
n_critic times the per-update batch (WGAN-GP's 64 with n_critic=5: 320).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import config_args, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/gan_base.py")
  config = default.get_config()
  config.name = "gan_base"
  config.data.dataset = "digits"
  config.data.random_flip = False

  model = config.model
  model.family = "gan"
  # dcgan | sngan_cnn | resnet | stylegan2 | mlp (models/gan.py, models/stylegan2.py).
  model.architecture = "dcgan"
  # Generator width ch and multipliers ch_mult, one entry per resolution from the
  # first feature map up: dcgan: the last hidden map is at half the image side (a
  # transposed conv makes the image); sngan_cnn: the last map is at the image side;
  # resnet: one up-sampling block per entry; stylegan2: widths at sides 4, 8, ...
  model.ch = 32
  model.ch_mult = (4, 2)
  # Discriminator width and multipliers, from the input resolution down (dcgan: one
  # stride-2 conv per entry; sngan_cnn: conv pairs, last entry the final 3x3 conv;
  # resnet: one block per entry; stylegan2: widths at sides 4, 8, ... as for G).
  model.d_ch = 32
  model.d_ch_mult = (2, 4)
  model.d_downsample = (True, True, False, False)   # resnet: which D blocks pool
  model.d_pooling = "sum"             # resnet: global sum (SNGAN, BigGAN) or mean
  model.z_dim = 32                    # latent size
  model.z_distribution = "normal"     # normal N(0, I) | uniform U[-1, 1]
  model.conditional = False           # class-conditional G and D (needs labels)
  model.init = "normal_0.02"          # normal_0.02 | glorot (x sqrt(2) on residual convs)
  model.g_spectral_norm = False       # spectral norm in G (BigGAN)
  model.d_spectral_norm = False       # spectral norm in D (SNGAN, BigGAN)
  model.sn_num_iters = 1              # power iterations per forward pass (Miyato: 1)
  model.shared_embedding_dim = 0      # resnet + classes: BigGAN shared embedding (0: per-layer)
  model.hierarchical_z = False        # resnet: split z over the blocks (BigGAN)
  model.mlp_hidden = 512              # mlp: width of each hidden layer
  model.mlp_layers = 3                # mlp: number of ReLU hidden layers
  model.w_dim = 512                   # stylegan2: intermediate latent size
  model.mapping_layers = 8            # stylegan2: G mapping network depth
  model.d_mapping_layers = 8          # stylegan2 + classes: D's class-embedding mapping
  model.style_mixing_prob = 0.0       # stylegan2: probability of style mixing in training
  model.d_architecture = "resnet"     # stylegan2: D blocks 'orig' | 'resnet'
  model.mbstd_group_size = 4          # stylegan2: minibatch-std group size
  model.mbstd_num_features = 1        # stylegan2: minibatch-std feature maps

  config.gan = gan = ml_collections.ConfigDict()
  # non_saturating | hinge | wasserstein | least_squares (train/gan_losses.py).
  gan.loss = "non_saturating"
  gan.n_critic = 1                    # D updates per G update (each on fresh data)
  gan.g_batch_size = 0                # latents per G update; 0: batch_size / n_critic
  # D's peak learning rate (two time-scale updates); None: config.optim.learning_rate.
  # D follows config.optim's schedule, counted in generator steps.
  gan.d_learning_rate = placeholder(float)
  gan.d_beta1 = placeholder(float)    # D's Adam betas; None: config.optim's
  gan.d_beta2 = placeholder(float)
  gan.gp_weight = 0.0                 # lambda of the WGAN-GP gradient penalty (0: off)
  gan.r1_gamma = 0.0                  # gamma of the R1 penalty (gamma / 2) R1 (0: off)
  gan.r1_every = 1                    # k > 1: lazy R1, a separate D step every k updates
  gan.ortho_weight = 0.0              # BigGAN orthogonal regularisation of G (0: off)
  gan.diffaugment = ""                # e.g. 'color,translation,cutout' ('' : off)
  gan.ema_start_step = 0              # G EMA copies the params before this step
  # > 0: EMA decay 0.5 ** (g_batch / half-life in images) (StyleGAN2-ADA); 0: use
  # config.optim.ema_decay.
  gan.ema_half_life_images = 0
  gan.ema_rampup = 0.0                # > 0: half-life <= images seen * ema_rampup

  # Both players' optimizer (D's rate and betas: config.gan.d_*). DCGAN's Adam
  # (Radford et al. 2016): 2e-4, betas (0.5, 0.999), no warm-up.
  optim = config.optim
  optim.learning_rate = 2e-4
  optim.beta1 = 0.5
  optim.beta2 = 0.999
  optim.warmup_steps = 0
  optim.grad_clip_norm = 0.0          # GAN papers do not clip
  optim.ema_decay = 0.999             # the generator's EMA (see gan.ema_*)

  sampling = config.sampling
  sampling.use_ema = False
  # Batch-norm statistics when sampling: 'running' averages (eval mode) or the
  # statistics of each sampled batch (train mode without updates).
  sampling.batch_norm_stats = "running"
  sampling.truncation = 0.0           # > 0: truncated-normal latents (BigGAN); 0: off
  sampling.truncation_psi = 1.0       # stylegan2: w = w_avg + psi (w - w_avg)

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 2000
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 1000
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole digits test split (355) in one batch

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=10)
    training.log_every_steps = 5
  return config
