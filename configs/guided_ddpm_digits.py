"""Class-conditional DDPM with classifier-free guidance on the embedded `digits`.

Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance"): one U-Net learns p(x | y)
and p(x) by replacing the label with the null label at rate p_uncond (Algorithm 1;
the paper's best p_uncond is 0.1-0.2), and sampling combines the two predictions with
weight w (eq. 6). The network, schedule and optimiser are configs/ddpm_digits.py's.
It reproduces no paper number (the paper's are ImageNet 64/128 FID/IS tables); raise
w to trade diversity for class fidelity (see the class_coverage metric of --mode=eval).
Its default run, with ddpm_digits' quick protocol, took 16m09s on the 2-core CPU
machine at load average 12-14 (start-up and compile 271 s, training 539 s at 1.30
steps/s, grid 22 s, bound 52 s, sample metric 76 s; `python
benchmarks/quickstart.py guided_ddpm_digits`, 2026-12-07): the same work as
ddpm_digits plus guided sampling's two network passes per step.

  python main.py --config=configs/guided_ddpm_digits.py --workdir=/tmp/guided_ddpm_digits
  python main.py --config=configs/guided_ddpm_digits.py --workdir=/tmp/guided_ddpm_digits \\
      --mode=sample --label=3 --guidance=3
  python main.py --config=configs/guided_ddpm_digits.py \\
      --workdir=/tmp/guided_ddpm_digits --mode=eval --config.guidance.weight=1
"""

from configs import config_args
from configs import ddpm_digits


def get_config(arg: str | None = None):
  config_args.parse(arg, "configs/guided_ddpm_digits.py")
  config = ddpm_digits.get_config(arg)
  config.name = "guided_ddpm_digits"
  config.model.conditional = True       # label embedding, plus the null row
  config.guidance.p_uncond = 0.1        # P(null label) per example (paper: 0.1-0.2)
  config.guidance.weight = 1.0          # w of eq. 6 when sampling (flag: --guidance)
  return config
