"""Improved DDPM on the embedded `digits` dataset: a CPU-sized L_hybrid run.

Nichol & Dhariwal 2021 ("Improved Denoising Diffusion Probabilistic Models"): the
cosine schedule, learned variances and L_hybrid of configs/iddpm_cifar.py on
scikit-learn's 8x8 digits with a small U-Net (ddpm_digits.py's), T=500 and sampling
with 50 respaced steps (sec. 4), which learned variances make possible. CPU-sized: it
leaves samples, TensorBoard logs, checkpoints and the test-set bits/dim (variational
bound, all 500 terms) in the workdir. It reproduces no paper number.

  python main.py --config=configs/iddpm_digits.py --workdir=/tmp/iddpm_digits
  python main.py --config=configs/iddpm_digits.py:vlb --workdir=/tmp/iddpm_digits_vlb
  python main.py --config=configs/iddpm_digits.py:runlocal --workdir=/tmp/iddpm_smoke

Evaluating a short run: the cosine schedule's last step has beta_T = 0.999 (the cap of
eq. 17), so its bound term is about (SNR_{T-2} / SNR_{T-1} - 1) / 2 = 500 times the
network's eps error at t = T. After 2,500 steps the EMA weights (decay 0.999) still
average in weights from ~1,000 steps back, and that one term is 8.5 of the EMA's 13.2
bits/dim; the raw weights give 5.5. Evaluate short runs with
--config.sampling.use_ema=False too (the report records which weights it used).

Arguments (comma-separated): 'vlb' trains with L_vlb and importance-sampled
timesteps instead; 'runlocal' is a seconds-long smoke test.
"""

from configs import default
from configs import iddpm_cifar

ARGS = ("vlb", "runlocal")


def get_config(arg: str | None = None):
  args = tuple(a for a in (arg or "").split(",") if a)
  unknown = [a for a in args if a not in ARGS]
  if unknown:
    raise ValueError(f"Unknown config argument(s) {unknown}; choose from {ARGS} "
                     "(comma-separated).")
  config = default.get_config()
  config.name = "iddpm_digits_vlb" if "vlb" in args else "iddpm_digits"

  config.data.dataset = "digits"
  config.data.image_size = None       # native 8x8
  config.data.random_flip = False     # digits are not mirror-symmetric

  model = config.model
  model.family = "ddpm"
  model.ch = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.num_groups = 8

  iddpm_cifar.improved_diffusion(config, loss="vlb" if "vlb" in args else "hybrid")
  config.diffusion.num_timesteps = 500
  config.sampling.num_steps = 50      # respaced sampling: 50 of the 500 steps

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200
  config.optim.ema_decay = 0.999

  training = config.training
  training.batch_size = 64
  training.num_train_steps = 2500
  training.log_every_steps = 100
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 1250
  training.num_samples_in_grid = 64

  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.eval.vlb_timestep_chunk = 50

  if "runlocal" in args:              # a seconds-long smoke test
    training.num_train_steps = 20
    training.log_every_steps = 10
    training.checkpoint_every_steps = 10
    training.sample_every_steps = 20
    training.num_samples_in_grid = 4
    config.diffusion.num_timesteps = 40
    config.sampling.num_steps = 10
    config.eval.num_samples = 8
    config.eval.num_eval_examples = 32
    config.eval.batch_size = 32
    config.eval.vlb_timestep_chunk = 10
  return config
