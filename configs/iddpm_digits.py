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

from configs import config_args
from configs import ddpm_base
from configs import iddpm_cifar


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/iddpm_digits.py", choices=("vlb",))
  # The base's digits data, U-Net, optimiser and training length (ddpm_digits.py's).
  config = ddpm_base.get_config()
  config.name = "iddpm_digits_vlb" if "vlb" in args else "iddpm_digits"

  iddpm_cifar.improved_diffusion(config, loss="vlb" if "vlb" in args else "hybrid")
  config.diffusion.num_timesteps = 500
  config.sampling.num_steps = 50      # respaced sampling: 50 of the 500 steps
  config.eval.vlb_timestep_chunk = 50

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config)
    config.diffusion.num_timesteps = 40
    config.sampling.num_steps = 10
    config.eval.vlb_timestep_chunk = 10
  return config
