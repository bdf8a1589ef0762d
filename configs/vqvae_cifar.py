"""VQ-VAE on CIFAR-10: van den Oord et al. 2017, "Neural Discrete Representation
Learning", section 4.1.

Reproduces the VQ-VAE bound on CIFAR-10 test NLL, 4.67 bits/dim (section 4.1; VAE
4.51, VIMCO 5.14 with the same architecture), with the uniform prior over the codes
that stage 1 trains under: bpd = (-log p(x|z_q) + N log K) / (3072 ln 2).
Section 4.1: encoder of 2 stride-2 4x4 convolutions and two residual 3x3 blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv), all with 256 hidden units; decoder of two residual
blocks and two stride-2 4x4 transposed convolutions; Adam at 2e-4, 250,000 steps of
batch 128. Section 3.2: a field of 8 x 8 x 10 latents (G=10 per position), beta=0.25,
the codebook trained by the loss of eq. 3 (EMA updates "not used for the experiments
in this work"). Not stated for CIFAR-10, chosen here: K=512 (the paper's ImageNet
value), D=64, the decoder likelihood (a discretized logistic per sub-pixel: a
proper 256-level likelihood), the 1x1 / 3x3 projections into and out of the code
space, no gradient clipping, no parameter averaging. Stage 1 has 6,397,574
parameters (network) + 32,768 (codebook); the paper gives no count.

Stage 2 (':prior'): a Gated PixelCNN over the 8x8x10 codes, 20 layers of 384 units
("similar to those used by the authors of the PixelCNN paper", section 4.2, stated
for ImageNet; the paper reports no CIFAR-10 prior): 137,062,912 parameters
(masked-out kernel entries included), mostly the 5x5 vertical stacks. Its
`bpd` bounds -log p(x) with the learned prior instead of the uniform one.

  python main.py --config=configs/vqvae_cifar.py --workdir=runs/vqvae_cifar
  python main.py --config=configs/vqvae_cifar.py:prior --workdir=runs/vqvae_cifar_prior \\
      --config.vq.autoencoder_workdir=runs/vqvae_cifar

Args (comma-separated): 'prior' selects stage 2; 'runlocal' shrinks everything for a
smoke test on a laptop CPU (it reproduces nothing).
"""

from configs import config_args, vqvae_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/vqvae_cifar.py", choices=("prior",))
  stage = "prior" if "prior" in args else "autoencoder"
  config = vqvae_base.get_config()
  config.vq.stage = stage
  config.name = f"vqvae_cifar_{stage}"

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # no augmentation in the paper

  vq = config.vq
  vq.num_codes = 512                  # K (ImageNet's value, section 4.2)
  vq.code_dim = 64                    # D (not stated)
  vq.latents_per_position = 10        # the 8 x 8 x 10 field of section 3.2
  vq.beta = 0.25                      # section 3.2
  vq.codebook_update = "loss"         # eq. 3; 'ema' is appendix A.1
  vq.ema_decay = 0.99                 # appendix A.1 (usage average only, with 'loss')
  vq.dead_code_threshold = 0.0        # no restarts in the paper

  model = config.model
  if stage == "autoencoder":
    model.ch = 256                    # section 4.1: all layers 256 hidden units
    model.res_ch = 256
    model.num_res_blocks = 2
    model.num_downsamples = 2         # 32x32 -> 8x8
  else:
    model.name = "gated_pixelcnn"
    model.embed_dim = 64
    model.ch = 384                    # Gated PixelCNN paper's size (section 3.1 there)
    model.num_layers = 20
    model.kernel_size = 5
    model.first_kernel_size = 7
    model.head_features = 1024

  config.optim.optimizer = "adam"
  config.optim.learning_rate = 2e-4   # section 4.1
  config.optim.warmup_steps = 0
  config.optim.grad_clip_norm = 0.0   # none stated
  config.optim.ema_decay = 0.9999     # kept, unused for eval (sampling.use_ema=False)

  training = config.training
  training.batch_size = 128           # section 4.1
  training.num_train_steps = 250_000  # section 4.1
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 50_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 50_000

  config.sampling.batch_size = 256
  config.eval.num_samples = 50_000
  config.eval.batch_size = 200

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=20, every=10, eval_examples=16)
    training.log_every_steps = 5
    training.sample_every_steps = 0
    config.eval.num_samples = 2
    if stage == "autoencoder":
      model.ch = model.res_ch = 16
      model.num_res_blocks = 1
    else:
      model.ch = 16                   # >= the 10 latents of a position
      model.num_layers = 1
      model.kernel_size = 3
      model.head_features = 16
      model.embed_dim = 4
    training.batch_size = 8
  return config
