"""NCSN++ with the VE SDE on CIFAR-10 (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations").

Reproduces Table 3 of the paper (evaluation/paper_tables.py):
  (no arg) NCSN++ cont. (VE):        FID 2.38, IS 9.83;
  'deep'   NCSN++ cont. deep (VE):   FID 2.20, IS 9.89 (the paper's best FID).
Both sample with the PC sampler (reverse-diffusion predictor + Langevin corrector,
snr 0.16, N = 1000 levels, a final denoising step): 2000 network evaluations.
Settings are score_sde's configs/ve/cifar10_ncsnpp_continuous.py and
cifar10_ncsnpp_deep_continuous.py: data in [0, 1], sigma in [0.01, 50], batch 128,
Adam 2e-4 with 5000 warm-up steps and clipping at 1, EMA 0.999, 1.3M steps (deep:
950k), random flips; the network maps its [0, 1] input to 2x - 1 first, as
score_sde's does (model.center_input).

score_sde's released checkpoints (ve/cifar10_ncsnpp_continuous/ and
ve/cifar10_ncsnpp_deep_continuous/ of its Google Drive folders; of two files, the
smaller N is Table 3's) convert into this config (convert/score_sde.py):

  python -m convert --from=score_sde_pytorch --source=checkpoint_<N>.pth \
      --config=configs/ncsnpp_cifar.py --workdir=runs/ncsnpp_cifar_published
  python -m convert --from=score_sde_flax --source=checkpoint_<N> \
      --config=configs/ncsnpp_cifar.py:deep --workdir=runs/ncsnpp_deep_published

  python main.py --config=configs/ncsnpp_cifar.py --workdir=runs/ncsnpp_cifar
  python main.py --config=configs/ncsnpp_cifar.py:deep --workdir=runs/ncsnpp_deep_cifar
  python main.py --config=configs/ncsnpp_cifar.py --workdir=runs/ncsnpp_cifar --mode=eval

Args (comma-separated): 'deep', 'runlocal' (a tiny network and a few steps on 16x16
`shapes`).
"""

from configs import config_args, score_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/ncsnpp_cifar.py", choices=("deep",))
  config = score_base.get_config()
  config.name = "ncsnpp_deep_cifar" if "deep" in args else "ncsnpp_cifar"
  config.data.dataset = "cifar10"
  config.data.random_flip = True

  sde = config.sde
  sde.type = "vesde"
  sde.sigma_min, sde.sigma_max = 0.01, 50.0
  sde.num_scales = 1000
  sde.continuous = True
  sde.data_centered = False           # score_sde's VE models see [0, 1]
  sde.reduce_mean = False
  sde.sample_eps = 1e-5

  m = config.model
  m.name = "ncsnpp"
  m.ch, m.ch_mult = 128, (1, 2, 2, 2)
  m.num_res_blocks = 8 if "deep" in args else 4
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.num_groups = 32
  m.resamp_with_conv, m.fir, m.fir_kernel = True, True, (1, 3, 3, 1)
  m.skip_rescale, m.resblock_type = True, "biggan"
  m.progressive, m.progressive_input, m.progressive_combine = "none", "residual", "sum"
  m.embedding_type, m.fourier_scale, m.init_scale = "fourier", 16.0, 0.0
  m.center_input = True               # score_sde's network maps [0, 1] to 2x - 1

  o = config.optim
  o.optimizer, o.learning_rate, o.warmup_steps = "adam", 2e-4, 5000
  o.beta1, o.beta2, o.eps, o.grad_clip_norm = 0.9, 0.999, 1e-8, 1.0
  o.ema_decay = 0.999

  t = config.training
  t.batch_size = 128
  t.num_train_steps = 950_000 if "deep" in args else 1_300_000
  t.checkpoint_every_steps = 10_000
  t.keep_checkpoint_every_steps = 50_000
  t.sample_every_steps = 50_000
  t.steps_per_call = 5                # score_sde's n_jitted_steps

  s = config.sampling
  s.method, s.predictor, s.corrector = "pc", "reverse_diffusion", "langevin"
  s.snr, s.n_steps_each, s.noise_removal = 0.16, 1, True
  s.batch_size = 1000
  config.eval.batch_size = 1000
  config.eval.num_samples = 50_000

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=5, eval_examples=8)
    t.sample_every_steps = 5
    config.eval.num_samples = 4
    m.ch, m.ch_mult, m.num_res_blocks, m.num_groups = 16, (1, 2), 1, 8
    config.data.dataset, config.data.random_flip = "shapes/16", False
    m.attn_resolutions = (8,)
    sde.num_scales = 10
    t.batch_size, t.steps_per_call = 8, 1
    s.batch_size = 4
    config.eval.ode_rtol = config.eval.ode_atol = 1e-2
  return config
