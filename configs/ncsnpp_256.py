"""NCSN++ with the VE SDE at 256x256 (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", Sec. 4.4 and App. H).

The paper's high-resolution samples (Fig. 1, 12): there is no table row; these configs
exist to hold the released weights and sample from them. Settings are score_sde's
configs/default_lsun_configs.py with configs/ve/celebahq_256_ncsnpp_continuous.py,
ffhq_256_ncsnpp_continuous.py, church_ncsnpp_continuous.py and
bedroom_ncsnpp_continuous.py: NCSN++ with nf 128, ch_mult (1, 1, 2, 2, 2, 2, 2), 2
residual blocks per level, attention at 16x16, FIR resampling, BigGAN blocks, output
and input pyramids ('output_skip' / 'input_skip', summed), dropout 0 (65.6M
parameters); data in [0, 1] mapped to 2x - 1 inside the network; sigma in [0.01,
sigma_max] with sigma_max 348 (CelebA-HQ, FFHQ), 380 (church), 378 (bedroom); N = 2000
levels; PC sampling with the reverse-diffusion predictor and one Langevin corrector
step at snr 0.075 (4000 network evaluations); batch 64, Adam 2e-4 with 5000 warm-up
steps and clipping at 1, EMA 0.999, 2.4M steps, random flips.

  python main.py --config=configs/ncsnpp_256.py:church --workdir=runs/ncsnpp_church
  python main.py --config=configs/ncsnpp_256.py:church --workdir=runs/ncsnpp_church \\
      --mode=sample

The published weights convert into it, from diffusers (google/ncsnpp-celebahq-256,
-ffhq-256, -church-256, -bedroom-256) or from score_sde_pytorch's .pth files:

  huggingface-cli download google/ncsnpp-church-256 --local-dir ncsnpp-church-256
  python -m convert --from=diffusers_ncsnpp --source=ncsnpp-church-256 \\
      --config=configs/ncsnpp_256.py:church --workdir=runs/ncsnpp_church_published

Args (comma-separated): one of 'celebahq' (the default), 'ffhq', 'church', 'bedroom';
'runlocal' (a tiny network and a few steps on 16x16 `shapes`). Data: CelebA-HQ is tfds
celeb_a_hq/256 (a manual download; its one split serves training and evaluation),
LSUN is tfds lsun/church_outdoor and lsun/bedroom (center-cropped and resized to
256); FFHQ has no tfds builder: prepare a tfds dataset named `ffhq` (256x256 images
under 'image') in config.data.data_dir, or set --config.data.dataset to yours.
Sampling batches are 64 (score_sde's 512 were split over a TPU pod).
"""

from configs import config_args, score_base

DATASETS = ("celebahq", "ffhq", "church", "bedroom")
# score_sde's sigma_max per dataset (default_lsun_configs.py: 378, the bedroom's).
SIGMA_MAX = dict(celebahq=348.0, ffhq=348.0, church=380.0, bedroom=378.0)
TFDS = dict(celebahq=("celeb_a_hq/256", "train"), ffhq=("ffhq", "train"),
            church=("lsun/church_outdoor", "validation"),
            bedroom=("lsun/bedroom", "validation"))


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/ncsnpp_256.py", choices=DATASETS,
                           exclusive=(DATASETS,))
  dataset = next((a for a in args if a in DATASETS), "celebahq")
  config = score_base.get_config()
  config.name = f"ncsnpp_{dataset}_256"
  config.data.dataset, config.data.eval_split = TFDS[dataset]
  config.data.image_size = 256
  config.data.random_flip = True

  sde = config.sde
  sde.type = "vesde"
  sde.sigma_min, sde.sigma_max = 0.01, SIGMA_MAX[dataset]
  sde.num_scales = 2000
  sde.continuous = True
  sde.data_centered = False           # score_sde's VE models see [0, 1]
  sde.reduce_mean = False
  sde.sample_eps = 1e-5

  m = config.model
  m.name = "ncsnpp"
  m.ch, m.ch_mult = 128, (1, 1, 2, 2, 2, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (16,)
  m.dropout = 0.0
  m.num_groups = 32
  m.resamp_with_conv, m.fir, m.fir_kernel = True, True, (1, 3, 3, 1)
  m.skip_rescale, m.resblock_type = True, "biggan"
  m.progressive, m.progressive_input = "output_skip", "input_skip"
  m.progressive_combine = "sum"
  m.embedding_type, m.fourier_scale, m.init_scale = "fourier", 16.0, 0.0
  m.center_input = True               # score_sde's network maps [0, 1] to 2x - 1

  o = config.optim
  o.optimizer, o.learning_rate, o.warmup_steps = "adam", 2e-4, 5000
  o.beta1, o.beta2, o.eps, o.grad_clip_norm = 0.9, 0.999, 1e-8, 1.0
  o.ema_decay = 0.999

  t = config.training
  t.batch_size = 64
  t.num_train_steps = 2_400_000
  t.checkpoint_every_steps = 10_000
  t.keep_checkpoint_every_steps = 50_000
  t.sample_every_steps = 50_000
  t.steps_per_call = 5                # score_sde's n_jitted_steps

  s = config.sampling
  s.method, s.predictor, s.corrector = "pc", "reverse_diffusion", "langevin"
  s.snr, s.n_steps_each, s.noise_removal = 0.075, 1, True
  s.batch_size = 64
  config.eval.batch_size = 64
  config.eval.num_samples = 50_000

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=5, eval_examples=8)
    t.sample_every_steps = 5
    config.eval.num_samples = 4
    m.ch, m.ch_mult, m.num_res_blocks, m.num_groups = 16, (1, 2), 1, 8
    config.data.dataset, config.data.eval_split = "shapes/16", "test"
    config.data.image_size, config.data.random_flip = None, False
    m.attn_resolutions = (8,)
    sde.num_scales = 10
    t.batch_size, t.steps_per_call = 8, 1
    s.batch_size = 4
    config.eval.ode_rtol = config.eval.ode_atol = 1e-2
  return config
