"""Shared fields of the VQ-VAE configs (train/vqvae.py): config.vq and the two
meanings of config.model (stage 1: the autoencoder; stage 2: the prior network).

Not an experiment: configs/vqvae_digits.py and configs/vqvae_cifar.py build on it.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import default


def vq_config() -> ml_collections.ConfigDict:
  """config.vq: the stage, the quantizer and where stage 2 finds stage 1."""
  vq = ml_collections.ConfigDict()
  # 'autoencoder' (stage 1: encoder, decoder, codebook under a uniform prior) or
  # 'prior' (stage 2: a PixelCNN over the frozen stage-1 codes).
  vq.stage = "autoencoder"
  vq.num_codes = 512                  # K, codebook size (a K-way categorical per latent)
  vq.code_dim = 64                    # D, dimension of each code vector e_k
  vq.latents_per_position = 1         # G: latents per position of the h x w map
  vq.beta = 0.25                      # commitment weight (eq. 3; the paper's value)
  # 'loss': the codebook is a parameter trained by ||sg[z_e] - e||^2 (eq. 3, the
  # paper's experiments); 'ema': exponential moving averages (appendix A.1).
  vq.codebook_update = "loss"
  # gamma of the EMA updates (appendix A.1: 0.99); also the decay of the code-usage
  # average that dead-code restarts read, whichever the update.
  vq.ema_decay = 0.99
  vq.ema_epsilon = 1e-5               # Laplace smoothing of the EMA cluster sizes
  # A code whose EMA usage (assignments per batch) falls below this is moved onto a
  # random encoder output of the batch; 0 = never (the paper has no restarts).
  vq.dead_code_threshold = 0.0
  # Stage 2 only: the workdir of the finished stage-1 run (its newest checkpoint and
  # config.json are read; its model/vq fields, not this config's, define the codes).
  vq.autoencoder_workdir = placeholder(str)
  return vq


def autoencoder_model() -> ml_collections.ConfigDict:
  """config.model of stage 1: the encoder/decoder of models/vqvae.py."""
  model = ml_collections.ConfigDict()
  model.family = "vqvae"
  model.ch = 256                      # hidden units of the strided convolutions
  model.res_ch = 256                  # hidden units of the residual blocks' 3x3 conv
  model.num_res_blocks = 2            # residual 3x3 blocks in encoder and decoder
  model.num_downsamples = 2           # stride-2 4x4 convs: latents are H / 2^s wide
  model.num_groups = 32               # unused (no normalisation); kept for overrides
  return model


def prior_model() -> ml_collections.ConfigDict:
  """config.model of stage 2: the PixelCNN over the code map."""
  model = ml_collections.ConfigDict()
  model.family = "vqvae"
  model.name = "gated_pixelcnn"       # gated_pixelcnn | pixelcnn (models/pixelcnn.py)
  model.conditional = False           # class-conditional (Gated PixelCNN only)
  model.embed_dim = 64                # learned embedding of each code, per latent
  model.ch = 128                      # feature maps per layer (p; PixelCNN: h)
  model.num_layers = 15               # gated layers / residual blocks
  model.kernel_size = 3               # n of every layer after the first
  model.first_kernel_size = 7         # the first (mask-A) layer
  model.head_features = 1024          # the two output 1x1 layers
  model.num_groups = 32               # unused; kept for overrides
  return model


def get_config(stage: str = "autoencoder") -> ml_collections.ConfigDict:
  """default.py plus config.vq; config.model for `stage`."""
  if stage not in ("autoencoder", "prior"):
    raise ValueError(f"stage={stage!r}; choose 'autoencoder' or 'prior'.")
  config = default.get_config()
  config.name = f"vqvae_{stage}"
  config.vq = vq_config()
  config.vq.stage = stage
  config.model = autoencoder_model() if stage == "autoencoder" else prior_model()
  # Recorded only (the stage fixes the sampler): stage 1 decodes uniformly drawn
  # codes, stage 2 draws codes from the prior one latent at a time, then decodes.
  config.sampling.method = "autoregressive" if stage == "prior" else "decode"
  config.sampling.decoder_output = "mean"   # mean | sample: what decoded images show
  config.sampling.use_ema = False     # the paper averages no parameters
  return config
