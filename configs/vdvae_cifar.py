"""VDVAE on CIFAR-10: Child 2021, "Very Deep VAEs Generalize Autoregressive Models and
Can Outperform Them on Images" (ICLR 2021), the likelihood results table, CIFAR-10
row: 2.87 bits/dim on the test set (an ELBO; the reference README gives the four
seeds as 2.879, 2.842, 2.898, 2.864).

The settings are those of the reference code (github.com/openai/vdvae, hps.py, the
'cifar10' set over the argparse defaults, and README.md):
  width 384, zdim 16, bottleneck_multiple 0.25, 10 mixture components,
  enc_blocks "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3" (33 blocks),
  dec_blocks "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21" (43 latent layers),
  AdamW (FusedAdam) lr 2e-4, betas (0.9, 0.9), weight decay 0.01, linear warm-up over
  100 steps then constant, gradient clipping at norm 200, updates skipped at norm
  >= 400, EMA rate 0.9999 (hps.py's cifar10 value), batch 16 per GPU on 2 GPUs = 32,
  ~1M iterations with early stopping (README: seeds stopped at 650k-1.05M), encoder
  input standardized with the training set's mean 120.63838 and std 64.16736 (data.py).
Parameters: 39,145,700 as built by models/hvae.py (the README's "39M parameters").

Differences: the paper evaluates the EMA weights at the checkpoint with the best
validation ELBO (a 5k-image split of the training set); here training runs a fixed
number of steps on all 50k images and evaluates the final EMA weights.

  python main.py --config=configs/vdvae_cifar.py --workdir=/tmp/vdvae_cifar
  python main.py --config=configs/vdvae_cifar.py:runlocal --workdir=/tmp/vdvae_smoke

The authors' published CIFAR-10 weights (README: four seeds' EMA state dicts) convert
into a workdir of this config (convert/vdvae.py; a raw <run>-model.th beside the EMA
file, where a run has one, becomes params, the EMA weights ema_params):

  wget https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/cifar10-seed0-iter-900000-model-ema.th
  python -m convert --from=vdvae --source=cifar10-seed0-iter-900000-model-ema.th \
      --config=configs/vdvae_cifar.py --workdir=runs/vdvae_cifar_published
  python main.py --config=configs/vdvae_cifar.py --workdir=runs/vdvae_cifar_published \
      --mode=eval --config.eval.sample_metrics=none   # test ELBO (README: 2.879)
"""

from configs import config_args
from configs import hvae_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/vdvae_cifar.py")
  config = hvae_base.get_config()
  config.name = "vdvae_cifar"

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # VDVAE does not augment

  config.model.ch = 384               # VDVAE's `width`: channels of the residual stream

  # hps.py's argparse defaults and its cifar10 set.
  hvae = config.hvae
  hvae.enc_blocks = "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3"   # 33 blocks
  hvae.dec_blocks = "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"   # 43 latent layers
  hvae.zdim = 16
  hvae.bottleneck_multiple = 0.25
  hvae.num_mixtures = 10
  hvae.grad_clip = 200.0
  hvae.skip_threshold = 400.0
  hvae.input_mean = 120.63838         # CIFAR-10 training-set statistics (data.py)
  hvae.input_std = 64.16736

  optim = config.optim
  optim.optimizer = "adamw"
  optim.learning_rate = 2e-4
  optim.warmup_steps = 100            # linear from 0, then constant
  optim.lr_schedule = "constant"
  optim.beta1 = 0.9
  optim.beta2 = 0.9                   # VDVAE's adam_beta2 default
  optim.eps = 1e-8                    # FusedAdam's default
  optim.weight_decay = 0.01
  optim.grad_clip_norm = 0.0          # clipping is the family's (config.hvae.grad_clip)
  optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 32            # 16 per GPU x 2 GPUs
  training.num_train_steps = 1_000_000
  training.log_every_steps = 1000
  training.checkpoint_every_steps = 25_000
  training.sample_every_steps = 10_000
  training.num_samples_in_grid = 64
  training.halt_on_nonfinite = False  # skipped updates keep NaNs out of the weights

  config.sampling.temperature = 1.0   # scales every prior's standard deviation
  config.sampling.use_ema = True
  config.sampling.batch_size = 256
  config.eval.batch_size = 250        # 10k test images in 40 batches
  config.eval.num_samples = 50_000
  # VDVAE reports the ELBO; the IWAE bound costs k decoder passes per test image.
  config.eval.iwae_samples = 0        # k > 0 adds bpd_iwae (e.g. 100, chunk 10)
  config.eval.iwae_chunk = 1

  if "runlocal" in args:   # a seconds-long smoke test of the same structure
    config_args.runlocal(config, num_train_steps=4, every=2, eval_examples=16)
    config.eval.batch_size = 8
    config.eval.sample_metrics = "none"
    training.batch_size = 8
    config.model.ch = 16
    hvae.enc_blocks = "32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1"
    hvae.dec_blocks = "1x1,4m1,8m4,16m8,32m16"
    hvae.num_mixtures = 2
  return config
