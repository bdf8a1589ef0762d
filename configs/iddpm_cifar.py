"""Improved DDPM on CIFAR-10: Nichol & Dhariwal 2021, "Improved Denoising Diffusion
Probabilistic Models" (ICML 2021).

Reproduces the unconditional CIFAR-10 runs of the paper (sec. 3 and 4, Table 2, the
L_hybrid and L_vlb rows with the cosine schedule, 500K training steps; the L_vlb model
gives the paper's CIFAR-10 NLL of 2.94 bits/dim, Table 3). Hyperparameters as in the
paper and its released CIFAR-10 runs (openai/improved-diffusion README): T=4000, cosine
schedule (eq. 17, s=0.008, betas capped at 0.999), learned variances (eq. 15,
'learned_range'), L_hybrid = L_simple + 0.001 L_vlb (eq. 16), U-Net ch=128,
ch_mult (1,2,2,2), 3 residual blocks per level, attention at 16x16 and 8x8, dropout 0.3;
Adam, learning rate 1e-4, no warm-up, no gradient clipping, batch 128, EMA 0.9999,
500K steps, no data augmentation; timesteps fed to the network as t * 1000 / T.

Parameters: 52,546,438 (models/unet.py with 2C = 6 output channels, 4-head attention
and scale-shift GroupNorm, as in the released U-Net; its checkpoint is named "50M").
The network is the released one exactly, down to its PyTorch details (cosine-first
timestep embedding, GroupNorm epsilon 1e-5, downsampling conv padded (1, 1)), so the
published checkpoints convert into this config (README, "Published weights"):

  python -m convert --from=improved_diffusion --source=cifar10_uncond_50M_500K.pt \
      --config=configs/iddpm_cifar.py --workdir=runs/iddpm_cifar_published
  python -m convert --from=improved_diffusion --source=cifar10_uncond_vlb_50M_500K.pt \
      --config=configs/iddpm_cifar.py:vlb --workdir=runs/iddpm_cifar_vlb_published

  python main.py --config=configs/iddpm_cifar.py --workdir=runs/iddpm_cifar
  python main.py --config=configs/iddpm_cifar.py:vlb --workdir=runs/iddpm_cifar_vlb
  python main.py --config=configs/iddpm_cifar.py --workdir=runs/iddpm_cifar --mode=eval
  python main.py --config=configs/iddpm_cifar.py --workdir=runs/iddpm_cifar --mode=sample

Arguments (comma-separated): 'vlb' trains the L_vlb row instead (L_vlb alone with
importance-sampled timesteps, eq. 18); 'runlocal' shrinks everything to a seconds-long
smoke test that reproduces nothing. Set config.sampling.num_steps (e.g. 100) to sample
with K respaced steps (sec. 4, Fig. 8); the default samples with all 4000.
"""

import ml_collections

from configs import config_args
from configs import ddpm_base


def improved_diffusion(config: ml_collections.ConfigDict, *, loss: str = "hybrid"):
  """Sets the Improved-DDPM fields of config.diffusion (configs/ddpm_base.py
  documents them).

  loss='hybrid': L_hybrid with uniform timesteps; loss='vlb': L_vlb with
  importance-sampled timesteps (the paper's two objectives).
  """
  d = config.diffusion
  d.num_timesteps = 4000
  d.beta_schedule = "cosine"          # eq. 17
  # Unused by the cosine schedule; Ho et al.'s range, as in earlier runs' config.json
  # (which the workdir guard compares on resume).
  d.beta_start, d.beta_end = 1e-4, 0.02
  d.var_type = "learned_range"        # eq. 15: the U-Net outputs [eps, v]
  d.loss = loss                       # hybrid (eq. 16) | vlb
  d.vlb_weight = 0.001                # lambda of L_hybrid (sec. 3.1)
  d.timestep_sampler = "loss_second_moment" if loss == "vlb" else "uniform"   # eq. 18
  d.loss_history_size = 10            # recent losses kept per timestep (sec. 3.3)
  d.uniform_prob = 0.001              # uniform mixed into eq. 18, as the paper's code
  d.rescale_timesteps = True          # the network sees t * 1000 / T (paper's code)
  return config


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/iddpm_cifar.py", choices=("vlb",))
  config = ddpm_base.get_config()
  config.name = "iddpm_cifar_vlb" if "vlb" in args else "iddpm_cifar"

  config.data.dataset = "cifar10"     # native 32x32
  config.data.random_flip = False     # the paper's code uses no augmentation

  model = config.model
  model.ch = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 3
  model.attn_resolutions = (16, 8)
  model.dropout = 0.3
  model.num_heads = 4                 # the released U-Net's attention heads
  model.scale_shift_norm = True       # timestep embedding scales and shifts the norm
  # The released U-Net's PyTorch details (improved_diffusion/unet.py and nn.py), so that
  # its checkpoints convert exactly (python -m convert --from=improved_diffusion):
  model.timestep_embedding = "improved_diffusion"   # cosines first, 10000^(-i/half)
  model.norm_epsilon = 1e-5           # nn.GroupNorm's default
  model.downsample_padding = "symmetric"   # Conv2d(stride=2, padding=1)
  model.num_groups = 32

  improved_diffusion(config, loss="vlb" if "vlb" in args else "hybrid")

  config.optim.optimizer = "adam"
  config.optim.learning_rate = 1e-4
  config.optim.warmup_steps = 0
  config.optim.grad_clip_norm = 0.0
  config.optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 128
  training.num_train_steps = 500_000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 50_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 100_000

  config.sampling.method = "ancestral"
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500
  config.eval.vlb_timestep_chunk = 50  # 80 chunks over the 4000 bound terms

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, eval_examples=16)
    training.log_every_steps = 5
    training.sample_every_steps = 0
    config.eval.num_samples = 16
    model.ch = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    training.batch_size = 8
    config.diffusion.num_timesteps = 100
    config.sampling.num_steps = 10
    config.eval.vlb_timestep_chunk = 25
  return config
