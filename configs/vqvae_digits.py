"""VQ-VAE on the embedded `digits` dataset: CPU-sized, no download needed.

Both stages of a VQ-VAE (van den Oord et al. 2017) on scikit-learn's 8x8 digits at
native size: one stride-2 convolution gives a 4x4 map of codes from K=32 vectors of
dimension 16, with EMA codebook updates and dead-code restarts. Stage 1 writes the
test bits/dim of the uniform-prior bound (`bpd`) and reconstructions; stage 2 trains
a Gated PixelCNN over the 16 codes and writes the bound with the learned prior and
its samples. It reproduces no paper number.

  python main.py --config=configs/vqvae_digits.py --workdir=/tmp/vqvae_digits
  python main.py --config=configs/vqvae_digits.py:prior --workdir=/tmp/vqvae_digits_prior \\
      --config.vq.autoencoder_workdir=/tmp/vqvae_digits

Args (comma-separated): 'prior' selects stage 2; 'runlocal' a seconds-long smoke run.
"""

from configs import config_args, vqvae_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/vqvae_digits.py", choices=("prior",))
  stage = "prior" if "prior" in args else "autoencoder"
  config = vqvae_base.get_config()
  config.vq.stage = stage
  config.name = f"vqvae_digits_{stage}"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False

  vq = config.vq
  vq.num_codes = 32                   # K
  vq.code_dim = 16                    # D
  vq.latents_per_position = 1
  vq.codebook_update = "ema"
  vq.ema_decay = 0.99
  vq.dead_code_threshold = 1.0        # fewer than ~1 assignment per batch: restart

  model = config.model
  if stage == "autoencoder":
    model.ch = 64
    model.res_ch = 32
    model.num_res_blocks = 2
    model.num_downsamples = 1         # 8x8 -> 4x4 codes
  else:
    model.embed_dim = 16
    model.ch = 32
    model.num_layers = 4
    model.kernel_size = 3
    model.first_kernel_size = 3       # the whole 4x4 map is a few layers away
    model.head_features = 64

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 1.0
  config.optim.ema_decay = 0.99       # unused for eval (sampling.use_ema=False)

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 2000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 1000
  training.sample_every_steps = 1000
  training.num_samples_in_grid = 64

  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config)
    model.ch = 16 if stage == "autoencoder" else 8
    if stage == "autoencoder":
      model.res_ch = 8
      model.num_res_blocks = 1
    else:
      model.num_layers = 1
      model.head_features = 16
  return config
