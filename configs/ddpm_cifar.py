"""DDPM on CIFAR-10: Ho et al. 2020, "Denoising Diffusion Probabilistic Models".

Reproduces Table 1 (unconditional CIFAR-10, L_simple): FID 3.17, IS 9.46, NLL <= 3.75
bits/dim, with the paper's hyperparameters exactly (section 4 and appendix B): T=1000,
linear betas 1e-4 to 0.02, U-Net with ch=128, ch_mult (1,2,2,2), 2 residual blocks per
level, self-attention at 16x16, dropout 0.1 (35.7M parameters); Adam, learning rate 2e-4
with 5000 linear warm-up steps, gradient clipping at norm 1, batch 128, EMA 0.9999,
random horizontal flips, 800k steps; sampling with sigma_t^2 = beta_t.

  python main.py --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar
  python main.py --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar --mode=eval
  python main.py --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar --mode=sample

`--config=configs/ddpm_cifar.py:runlocal` shrinks everything for a smoke test on a
laptop CPU (tiny network, a few steps); it reproduces nothing.
"""

from configs import config_args
from configs import ddpm_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/ddpm_cifar.py")
  config = ddpm_base.get_config()
  config.name = "ddpm_cifar"

  config.data.dataset = "cifar10"     # native 32x32
  config.data.random_flip = True

  model = config.model
  model.ch = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.num_groups = 32

  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.var_type = "fixedlarge"

  config.optim.optimizer = "adam"
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip_norm = 1.0
  config.optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 128
  training.num_train_steps = 800_000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 50_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 100_000

  config.sampling.method = "ancestral"
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500
  config.eval.vlb_timestep_chunk = 50   # 20 chunks over the 1000 bound terms

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, eval_examples=16)
    training.log_every_steps = 5
    training.sample_every_steps = 0
    config.eval.num_samples = 16
    model.ch = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    training.batch_size = 8
    config.diffusion.num_timesteps = 100
  return config
