"""SR3 super-resolution (Saharia et al. 2021) on the embedded `digits`: 4x4 -> 8x8.

The U-Net sees [x_t, bicubic upsampling of the low-res image] (2C channels) and
predicts eps of the high-res image (SR3 sec. 2); the low-res inputs are the
box-downsampled training images. The noise schedule and sampler are DDPM's
(configs/ddpm_digits.py; SR3's own continuous-noise-level schedule is not used). It
reproduces no paper number (SR3 reports 16->128 faces and 64->256 ImageNet); test-set
bits/dim of p(x | low-res) go to workdir/eval/.

  python main.py --config=configs/sr3_digits.py --workdir=/tmp/sr3_digits
  python main.py --config=configs/sr3_digits.py --workdir=/tmp/sr3_digits \\
      --mode=sample --edit=superres --input=low_res_4x4.png

It has no unconditional samples: the training grid and --mode=eval's sample metrics
are off, and super-resolution runs through --edit=superres. Its default run (700
steps and the bound, ddpm_digits' quick protocol) took 19m15s on the 2-core CPU
machine at load average 14-17 (start-up and compile 264 s, training 755 s at 0.93
steps/s, bound 128 s on 100 test images, 75 since; `python
benchmarks/quickstart.py sr3_digits`, 2026-12-07): ddpm_digits' work less sampling.
"""

from configs import config_args
from configs import ddpm_digits


def get_config(arg: str | None = None):
  config_args.parse(arg, "configs/sr3_digits.py")
  config = ddpm_digits.get_config(arg)
  config.name = "sr3_digits"
  config.superres.factor = 2              # 4x4 -> 8x8
  config.superres.upsample_method = "bicubic"   # SR3's interpolation
  config.training.sample_every_steps = 0  # sampling needs low-res inputs
  config.eval.sample_metrics = "none"     # bits/dim of p(x | low-res) only
  return config
