"""Base config of the score-based family (train/score.py): score SDEs and EDM.

Song et al. 2021 (VE / VP / sub-VP SDEs, NCSN++ and DDPM++ networks) and Karras et
al. 2022 (EDM's preconditioning, loss and Heun sampler). This is configs/default.py
plus every field train/score.py reads, each documented. The SDE, sampler and
likelihood fields default to score_sde's values (configs/default_cifar10_configs.py of
that code), with the VE SDE on data in [-1, 1]; the network is a small NCSN++ and the
run is short, so that the base itself trains on the embedded 8x8 `digits` on a CPU:

  python main.py --config=configs/score_base.py --workdir=/tmp/score_base
  python main.py --config=configs/score_base.py:runlocal --workdir=/tmp/score_smoke

Experiment configs (ncsnpp_cifar.py, ddpmpp_cifar.py, edm_cifar.py, score_digits.py)
start from `get_config()` and set what their paper sets.
"""

import ml_collections

from configs import config_args, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/score_base.py")
  config = default.get_config()
  config.name = "score_base"
  config.model.family = "score"

  # ------------------------------------------------------------------- sde
  config.sde = sde = ml_collections.ConfigDict()
  # vesde | vpsde | subvpsde (Song et al. 2021, eqs. 30/32/34) | edm (Karras et al.
  # 2022: x = x0 + sigma n with its preconditioning; sampled and evaluated as the VE
  # SDE between sigma_min and sigma_max). VE goes with the NCSN++ switches below.
  sde.type = "vesde"
  sde.sigma_min = 0.01                # VE / EDM noise range
  sde.sigma_max = 50.0
  # VP / sub-VP: beta(t) = beta_min + t (beta_max - beta_min).
  sde.beta_min = 0.1
  sde.beta_max = 20.0
  # N: steps of the PC sampler and of the discrete SMLD / DDPM chains; also the levels
  # editing (--mode=edit) walks.
  sde.num_scales = 1000
  # False: the discrete SMLD (VE) or DDPM (VP) loss over num_scales levels.
  sde.continuous = True
  # Data in [-1, 1] (True) or [0, 1] (False: score_sde's VE models).
  sde.data_centered = True
  # Loss: mean (True) or half sum (False) over the pixels; lambda(t) = g(t)^2
  # (likelihood weighting, Song et al. 2021b) and importance sampling of t.
  sde.reduce_mean = False
  sde.likelihood_weighting = False
  sde.importance_sampling = False
  sde.train_eps = 1e-5                # t ~ U(train_eps, 1) in training
  sde.sample_eps = 1e-3               # where samplers stop (score_sde: 1e-3 VP, 1e-5 VE)
  sde.likelihood_eps = 1e-5           # where the likelihood ODE starts
  # EDM only (Karras et al. Table 1): data std and log-normal training sigmas.
  sde.sigma_data = 0.5
  sde.p_mean = -1.2
  sde.p_std = 1.2

  # ----------------------------------------------------------------- model
  m = config.model
  # ncsnpp (NCSN++ / DDPM++ of score_sde) | songunet (EDM's version) | ddpm_unet (Ho et
  # al.'s U-Net: cheap runs and comparisons).
  m.name = "ncsnpp"
  # Width and depth, read by every network: base channels (nf / model_channels;
  # score_sde's CIFAR-10: 128), multiplier per resolution ((1, 2, 2, 2)), residual
  # blocks per resolution (4), resolutions (pixels) with self-attention ((16,)).
  m.ch = 32
  m.ch_mult = (1, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (4,)
  m.dropout = 0.0                     # score_sde's CIFAR-10: 0.1
  m.num_groups = 8                    # GroupNorm groups (score_sde, EDM: 32)
  m.conditional = False               # class-conditional (label embedding)
  m.dtype = "float32"                 # compute dtype: float32 or bfloat16
  m.resamp_with_conv = True           # conv (not pooling) in up/down-sampling
  # ncsnpp only (score_sde's NCSN++ / DDPM++ switches).
  m.fir = True                        # FIR up/down-sampling (NCSN++)
  m.fir_kernel = (1, 3, 3, 1)
  m.skip_rescale = True               # residual sums scaled by 1/sqrt(2)
  m.resblock_type = "biggan"          # biggan | ddpm
  m.progressive = "none"              # none | output_skip | residual
  m.progressive_input = "residual"    # none | input_skip | residual
  m.progressive_combine = "sum"       # sum | cat
  # ncsnpp and songunet: fourier (of log sigma, VE) | positional (of 999 t, VP; of
  # c_noise, EDM).
  m.embedding_type = "fourier"
  m.fourier_scale = 16.0
  m.init_scale = 0.0
  # ncsnpp only: the network maps its input x to 2x - 1 first, as score_sde's NCSN++
  # does for data in [0, 1] (sde.data_centered=False) and diffusers' NCSN++ with
  # center_input_sample; published VE weights need it.
  m.center_input = False
  # songunet only (EDM's networks/SongUNet): augmentation-label width (EDM: 9), noise
  # embedding width multiplier (1 DDPM++, 2 NCSN++), encoder standard | skip | residual,
  # decoder standard | skip; its resampling filter is fir_kernel ((1, 1) for DDPM++).
  m.augment_dim = 0
  m.channel_mult_noise = 1
  m.encoder_type = "standard"
  m.decoder_type = "standard"
  # ddpm_unet only.
  m.fused_attention = False           # jax.nn.dot_product_attention (U-Net attention)
  m.remat = False                     # recompute U-Net ResNet blocks in backward (memory)
  m.coordinate_channels = False       # U-Net input gets (row, col) channels (CoordConv)

  # ---------------------------------------------- classifier-free guidance
  # Ho & Salimans 2022, for class-conditional models (model.conditional): one network
  # learns p(x | y) and p(x) by training on the null label (num_classes) at rate
  # p_uncond. The guided score / EDM denoiser is eq. 6; bits/dim stay unguided.
  config.guidance = guidance = ml_collections.ConfigDict()
  guidance.p_uncond = 0.0             # P(null label) per training example; 0 = off
  # w of eq. 6 at sampling time, (1 + w) s(x, y) - w s(x, null); 0 = the plain
  # conditional sampler (bit for bit). Needs p_uncond > 0 in training.
  guidance.weight = 0.0

  # -------------------------------------------------------------- sampling
  s = config.sampling
  s.method = "pc"                     # pc | ode | edm_heun | dpm_solver
  # pc: euler_maruyama | reverse_diffusion | ancestral_sampling | none.
  s.predictor = "euler_maruyama"
  s.corrector = "none"                # pc: langevin | none
  s.snr = 0.16                        # pc: Langevin signal-to-noise ratio
  s.n_steps_each = 1                  # pc: corrector steps per noise level
  s.noise_removal = True              # pc/ode: a final denoising step
  s.ode_solver = "tsit5"              # ode: tsit5 | dopri5 (adaptive, diffrax)
  s.ode_rtol = 1e-5
  s.ode_atol = 1e-5
  s.num_steps = 18                    # edm_heun / dpm_solver: steps
  s.rho = 7.0                         # edm_heun / dpm_solver(karras): schedule exponent
  s.s_churn = 0.0                     # edm_heun: stochasticity (0: deterministic)
  s.s_min = 0.0
  s.s_max = float("inf")
  s.s_noise = 1.0
  s.skip_type = "logSNR"              # dpm_solver: logSNR | time_uniform | karras
  # Editing (--mode=edit walks the SDE as a DDPM chain): clip predicted x0 to [-1, 1].
  s.clip_denoised = True

  # ------------------------------------------------------------------ eval
  e = config.eval
  e.hutchinson = "rademacher"         # bits/dim: rademacher | gaussian | exact trace
  e.ode_solver = "tsit5"              # the probability-flow ODE of the bits/dim
  e.ode_rtol = 1e-5
  e.ode_atol = 1e-5
  e.num_samples = 1024
  e.batch_size = 360                  # the digits test split (355) in one padded batch

  # ------------------------------------------------------ a short digits run
  o = config.optim
  o.learning_rate = 1e-3
  o.warmup_steps = 200
  o.ema_decay = 0.999
  t = config.training
  t.batch_size = 64
  t.num_train_steps = 2500
  t.checkpoint_every_steps = 500
  t.sample_every_steps = 1250

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config)
    m.ch, m.num_res_blocks = 16, 1
    sde.num_scales = 20
    s.num_steps = 5
    e.ode_rtol = e.ode_atol = 1e-2
  return config
