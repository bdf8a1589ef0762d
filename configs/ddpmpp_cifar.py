"""DDPM++ with the VP or sub-VP SDE on CIFAR-10 (Song et al. 2021).

Reproduces Table 3 of the paper (evaluation/paper_tables.py):
  'vp,deep'     DDPM++ cont. deep (VP):      FID 2.41, IS 9.68, NLL 3.13 bits/dim
                (FID 3.08 with the probability-flow ODE);
  'subvp,deep'  DDPM++ cont. deep (sub-VP):  FID 2.41, IS 9.57, NLL 2.99 bits/dim
                (FID 2.92 with the ODE);
  'vp' / 'subvp' the non-deep rows of Table 3.
Sampling: Euler-Maruyama predictor, no corrector, N = 1000, a final denoising step
(1000 network evaluations). NLL: the probability-flow ODE with Rademacher
Hutchinson probes, uniform dequantization, rtol = atol = 1e-5 (--mode=eval).
Settings are score_sde's configs/vp/cifar10_ddpmpp_continuous.py,
cifar10_ddpmpp_deep_continuous.py and configs/subvp/cifar10_ddpmpp_deep_continuous.py:
data in [-1, 1], beta in [0.1, 20], loss averaged over pixels, batch 128, Adam 2e-4
with 5000 warm-up steps and clipping at 1, EMA 0.9999, 1.3M steps (deep: 950k).

  python main.py --config=configs/ddpmpp_cifar.py:vp,deep --workdir=runs/ddpmpp_vp_deep
  python main.py --config=configs/ddpmpp_cifar.py:subvp,deep --workdir=runs/ddpmpp_subvp_deep
  python main.py --config=configs/ddpmpp_cifar.py:vp,deep --workdir=runs/ddpmpp_vp_deep --mode=eval

score_sde's released checkpoints (vp/ and subvp/cifar10_ddpmpp[_deep]_continuous/; of
two files, the smaller N is Table 3's, the larger Table 2's) convert into the config of
their SDE, which the weights do not record (convert/score_sde.py):

  python -m convert --from=score_sde_pytorch --source=checkpoint_<N>.pth \
      --config=configs/ddpmpp_cifar.py:subvp,deep --workdir=runs/subvp_deep_published
  python -m convert --from=score_sde_flax --source=checkpoint_<N> \
      --config=configs/ddpmpp_cifar.py:vp --workdir=runs/ddpmpp_vp_published

Args (comma-separated): 'vp' (the default) or 'subvp', 'deep', 'runlocal' (a tiny
network and a few steps on 16x16 `shapes`).
"""

from configs import config_args, score_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/ddpmpp_cifar.py", choices=("vp", "subvp", "deep"),
                           exclusive=(("vp", "subvp"),))
  kind = "subvp" if "subvp" in args else "vp"
  deep = "deep" in args
  config = score_base.get_config()
  config.name = f"ddpmpp_{kind}{'_deep' if deep else ''}_cifar"
  config.data.dataset = "cifar10"
  config.data.random_flip = True

  sde = config.sde
  sde.type = "vpsde" if kind == "vp" else "subvpsde"
  sde.beta_min, sde.beta_max = 0.1, 20.0
  sde.num_scales = 1000
  sde.continuous = True
  sde.data_centered = True
  sde.reduce_mean = True
  sde.sample_eps = 1e-3

  m = config.model
  m.name = "ncsnpp"
  m.ch, m.ch_mult = 128, (1, 2, 2, 2)
  m.num_res_blocks = 8 if deep else 4
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.num_groups = 32
  m.resamp_with_conv, m.fir, m.fir_kernel = True, False, (1, 3, 3, 1)
  m.skip_rescale, m.resblock_type = True, "biggan"
  m.progressive, m.progressive_input, m.progressive_combine = "none", "none", "sum"
  m.embedding_type, m.fourier_scale, m.init_scale = "positional", 16.0, 0.0

  o = config.optim
  o.optimizer, o.learning_rate, o.warmup_steps = "adam", 2e-4, 5000
  o.beta1, o.beta2, o.eps, o.grad_clip_norm = 0.9, 0.999, 1e-8, 1.0
  o.ema_decay = 0.9999

  t = config.training
  t.batch_size = 128
  t.num_train_steps = 950_000 if deep else 1_300_000
  t.checkpoint_every_steps = 10_000
  t.keep_checkpoint_every_steps = 50_000
  t.sample_every_steps = 50_000
  t.steps_per_call = 5                # score_sde's n_jitted_steps

  s = config.sampling
  s.method, s.predictor, s.corrector = "pc", "euler_maruyama", "none"
  s.noise_removal = True
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
