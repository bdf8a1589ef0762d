"""The VQ-VAE family's base config (train/vqvae.py): van den Oord et al. 2017, two stages.

Stage 1 (vq.stage='autoencoder') trains an encoder, a decoder and a codebook of K
vectors under a uniform prior over the codes; stage 2 (vq.stage='prior') freezes the
finished stage-1 run (vq.autoencoder_workdir) and trains a PixelCNN over its code map.

This is the base: configs/default.py plus every field the VQ-VAE family reads, each
with its default and which stage reads it. config.model holds both stages' networks:
stage 1 reads ch, res_ch, num_res_blocks, num_downsamples; stage 2 reads name,
conditional, embed_dim, ch, num_layers, kernel_size, first_kernel_size, head_features
(stage 2 builds its autoencoder from the stage-1 run's config.json, not from these).
Experiment configs (vqvae_digits.py, vqvae_cifar.py) start from `get_config()`, and
their 'prior' argument sets vq.stage. It is itself runnable: a small VQ-VAE on the
embedded 8x8 `digits` (CPU, no download), the paper's quantizer (codebook trained by
eq. 3, beta 0.25, no restarts) with K=32 codes on a 4x4 map:

  python main.py --config=configs/vqvae_base.py --workdir=/tmp/vqvae_base
  python main.py --config=configs/vqvae_base.py --workdir=/tmp/vqvae_base_prior \\
      --config.vq.stage=prior --config.vq.autoencoder_workdir=/tmp/vqvae_base

`:runlocal` after the file name shrinks either stage for a seconds-long smoke test.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import config_args, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/vqvae_base.py")
  config = default.get_config()
  config.name = "vqvae_base"
  config.data.dataset = "digits"
  config.data.random_flip = False

  config.vq = vq = ml_collections.ConfigDict()
  # 'autoencoder' (stage 1: encoder, decoder, codebook under a uniform prior) or
  # 'prior' (stage 2: a PixelCNN over the frozen stage-1 codes).
  vq.stage = "autoencoder"
  # The quantizer, read by both stages: stage 2 checks that these three equal the
  # stage-1 run's, whose codebook it uses.
  vq.num_codes = 32                   # K, codebook size (a K-way categorical per latent)
  vq.code_dim = 16                    # D, dimension of each code vector e_k
  vq.latents_per_position = 1         # G: latents per position of the h x w map
  vq.beta = 0.25                      # stage 1: commitment weight (eq. 3; the paper's)
  # Stage 1: 'loss': the codebook is a parameter trained by ||sg[z_e] - e||^2 (eq. 3,
  # the paper's experiments); 'ema': exponential moving averages (appendix A.1).
  vq.codebook_update = "loss"
  # Stage 1: gamma of the EMA updates (appendix A.1: 0.99); also the decay of the
  # code-usage average that dead-code restarts read, whichever the update.
  vq.ema_decay = 0.99
  vq.ema_epsilon = 1e-5               # stage 1: Laplace smoothing of the EMA cluster sizes
  # Stage 1: a code whose EMA usage (assignments per batch) falls below this is moved
  # onto a random encoder output of the batch; 0 = never (the paper has no restarts).
  vq.dead_code_threshold = 0.0
  # Stage 2 only: the workdir of the finished stage-1 run (its newest checkpoint and
  # config.json are read; its model/vq fields, not this config's, define the codes).
  vq.autoencoder_workdir = placeholder(str)

  model = config.model
  model.family = "vqvae"
  # Stage 1: hidden units of the strided convolutions (models/vqvae.py). Stage 2: the
  # prior's feature maps per layer (p; PixelCNN: h), >= vq.latents_per_position.
  model.ch = 32
  model.res_ch = 32                   # stage 1: hidden units of the residual 3x3 convs
  model.num_res_blocks = 1            # stage 1: residual 3x3 blocks in encoder and decoder
  model.num_downsamples = 1           # stage 1: stride-2 4x4 convs: latents are H / 2^s wide
  model.name = "gated_pixelcnn"       # stage 2: gated_pixelcnn | pixelcnn (models/pixelcnn.py)
  model.conditional = False           # stage 2: class-conditional (Gated PixelCNN only)
  model.embed_dim = 16                # stage 2: learned embedding of each code, per latent
  model.num_layers = 4                # stage 2: gated layers / residual blocks
  model.kernel_size = 3               # stage 2: n of every layer after the first
  model.first_kernel_size = 3         # stage 2: the first (mask-A) layer
  model.head_features = 64            # stage 2: the two output 1x1 layers

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100

  sampling = config.sampling
  # Stage 1 samples decode uniformly drawn codes; stage 2 draws codes from the prior
  # one latent at a time, then decodes them.
  sampling.decoder_output = "mean"    # mean | sample: what decoded images show
  sampling.use_ema = False            # the paper averages no parameters

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 2000
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 1000
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole digits test split (355) in one batch

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config)
    model.ch = 16
    model.res_ch = 8
    model.num_layers = 1
    model.head_features = 16
  return config
