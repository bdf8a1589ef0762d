"""NCSN++ with the VE SDE on FFHQ 1024x1024 (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", Fig. 1 and App. H):
the first 1024x1024 samples of a score-based model.

There is no table row; this config holds the released weights and samples from them.
Settings are score_sde's configs/ve/ffhq_ncsnpp_continuous.py: NCSN++ with nf 16,
ch_mult (1, 2, 4, 8, 16, 32, 32, 32), one residual block per level, attention at
16x16, FIR resampling, BigGAN blocks, output and input pyramids (summed), dropout 0
(105.8M parameters); data in [0, 1] mapped to 2x - 1 inside the network; sigma in
[0.01, 1348]; N = 2000 levels; PC sampling with the reverse-diffusion predictor and one
Langevin corrector step at snr 0.15; loss averaged over pixels, batch 8, Adam 2e-4
with 5000 warm-up steps and clipping at 1, EMA 0.9999, 2.4M steps, random flips.

  python main.py --config=configs/ncsnpp_ffhq1024.py --workdir=runs/ncsnpp_ffhq1024

The published weights convert into it (google/ncsnpp-ffhq-1024, or score_sde_pytorch's
ve/ffhq_1024_ncsnpp_continuous .pth):

  huggingface-cli download google/ncsnpp-ffhq-1024 --local-dir ncsnpp-ffhq-1024
  python -m convert --from=diffusers_ncsnpp --source=ncsnpp-ffhq-1024 \\
      --config=configs/ncsnpp_ffhq1024.py --workdir=runs/ncsnpp_ffhq1024_published
  python main.py --config=configs/ncsnpp_ffhq1024.py \\
      --workdir=runs/ncsnpp_ffhq1024_published --mode=sample

FFHQ has no tfds builder: prepare a tfds dataset named `ffhq` (1024x1024 images under
'image') in config.data.data_dir, or set --config.data.dataset to yours; the image
shape comes from it. Args: 'runlocal' (a tiny network and a few steps on 16x16
`shapes`).
"""

from configs import config_args, ncsnpp_256


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/ncsnpp_ffhq1024.py")
  config = ncsnpp_256.get_config(",".join(("ffhq",) + args))
  config.name = "ncsnpp_ffhq_1024"
  if config_args.RUNLOCAL in args:
    return config                     # ncsnpp_256's tiny run
  config.data.image_size = 1024
  config.sde.sigma_max = 1348.0
  config.sde.reduce_mean = True
  m = config.model
  m.ch, m.ch_mult = 16, (1, 2, 4, 8, 16, 32, 32, 32)
  m.num_res_blocks = 1
  config.optim.ema_decay = 0.9999
  config.training.batch_size = 8
  config.sampling.snr = 0.15
  config.sampling.batch_size = config.eval.batch_size = 8
  return config
