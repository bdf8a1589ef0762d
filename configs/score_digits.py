"""Score-based diffusion on the embedded `digits`: every SDE on a laptop CPU.

Small NCSN++ / DDPM++ networks (Song et al. 2021) and EDM (Karras et al. 2022) on
scikit-learn's real 8x8 digits, trained for a few minutes on 2 CPU cores; they leave
digit samples in workdir/samples/ and the test-set bits/dim from the probability-flow
ODE in workdir/eval/. They reproduce no paper number.

  python main.py --config=configs/score_digits.py:vp --workdir=/tmp/score_vp
  python main.py --config=configs/score_digits.py:ve --workdir=/tmp/score_ve
  python main.py --config=configs/score_digits.py:subvp --workdir=/tmp/score_subvp
  python main.py --config=configs/score_digits.py:edm --workdir=/tmp/score_edm

Arg: the SDE (ve | vp | subvp | edm; vp if none is given), optionally ',runlocal' for
a seconds-long smoke test. The sampler is the paper's for each (PC reverse-diffusion +
Langevin for VE, Euler-Maruyama for VP / sub-VP, Heun for EDM); switch with
--config.sampling.method=ode|edm_heun|dpm_solver.
"""

from configs import config_args, score_base

SDES = ("ve", "vp", "subvp", "edm")


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/score_digits.py", choices=SDES, exclusive=(SDES,))
  kind = next((a for a in args if a in SDES), "vp")
  config = score_base.get_config()
  config.name = f"score_{kind}_digits"
  config.data.dataset = "digits"
  config.data.random_flip = False

  m = config.model
  m.name = "ncsnpp"
  m.ch = 32
  m.ch_mult = (1, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (4,)
  m.dropout = 0.0
  m.num_groups = 8
  m.resblock_type = "biggan"
  m.skip_rescale = True

  sde, s = config.sde, config.sampling
  if kind == "ve":          # NCSN++ (score_sde configs/ve): data in [0, 1]
    sde.type = "vesde"
    # sigma_max ~ the largest distance between two training images (Song & Ermon 2020).
    sde.sigma_min, sde.sigma_max = 0.01, 10.0
    sde.data_centered = False
    sde.reduce_mean = False
    sde.sample_eps = 1e-5
    sde.num_scales = 500
    m.fir, m.progressive_input, m.embedding_type = True, "residual", "fourier"
    s.method, s.predictor, s.corrector = "pc", "reverse_diffusion", "langevin"
  elif kind in ("vp", "subvp"):   # DDPM++ (score_sde configs/vp, configs/subvp)
    sde.type = "vpsde" if kind == "vp" else "subvpsde"
    sde.data_centered = True
    sde.reduce_mean = True
    sde.num_scales = 500
    m.fir, m.progressive_input, m.embedding_type = False, "none", "positional"
    s.method, s.predictor, s.corrector = "pc", "euler_maruyama", "none"
  else:                     # EDM: DDPM++ network with EDM's preconditioning
    sde.type = "edm"
    sde.sigma_min, sde.sigma_max = 0.002, 80.0
    sde.data_centered = True
    sde.sample_eps = 1e-5
    m.fir, m.progressive_input, m.embedding_type = False, "none", "positional"
    s.method, s.num_steps, s.rho = "edm_heun", 18, 7.0

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200
  config.optim.ema_decay = 0.999

  t = config.training
  t.batch_size = 64
  t.num_train_steps = 2500
  t.log_every_steps = 100
  t.checkpoint_every_steps = 500
  t.sample_every_steps = 1250
  t.num_samples_in_grid = 64

  config.sampling.batch_size = 256
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  config.eval.ode_rtol = config.eval.ode_atol = 1e-4

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, eval_examples=16)
    sde.num_scales = 20
    s.num_steps = 5
    m.ch, m.num_res_blocks = 16, 1
    config.eval.ode_rtol = config.eval.ode_atol = 1e-2
  return config
