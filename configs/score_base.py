"""Fields of the score-based family (train/score.py), on top of configs/default.py.

Experiment configs (ncsnpp_cifar.py, ddpmpp_cifar.py, edm_cifar.py, score_digits.py)
call `get_config()` here and override what their paper sets. The defaults are
score_sde's CIFAR-10 defaults (configs/default_cifar10_configs.py of that code).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.family = "score"

  # ------------------------------------------------------------------- sde
  config.sde = sde = ml_collections.ConfigDict()
  # vesde | vpsde | subvpsde (Song et al. 2021, eqs. 30/32/34) | edm (Karras et al.
  # 2022: x = x0 + sigma n with its preconditioning; sampled and evaluated as the VE
  # SDE between sigma_min and sigma_max).
  sde.type = "vpsde"
  sde.sigma_min = 0.01                # VE / EDM noise range
  sde.sigma_max = 50.0
  sde.beta_min = 0.1                  # VP / sub-VP: beta(t) = beta_min + t (beta_max - beta_min)
  sde.beta_max = 20.0
  # N: steps of the PC sampler and of the discrete SMLD / DDPM chains.
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
  # ncsnpp (NCSN++ / DDPM++ of score_sde) | songunet (EDM's version) | ddpm_unet.
  m.name = "ncsnpp"
  m.ch = 128                          # nf / model_channels
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 4
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.resamp_with_conv = True
  m.fir = True                        # FIR up/down-sampling (NCSN++)
  m.fir_kernel = (1, 3, 3, 1)
  m.skip_rescale = True               # residual sums scaled by 1/sqrt(2)
  m.resblock_type = "biggan"          # biggan | ddpm
  m.progressive = "none"              # none | output_skip | residual
  m.progressive_input = "residual"    # none | input_skip | residual
  m.progressive_combine = "sum"       # sum | cat
  # fourier (of log sigma, VE) | positional (of 999 t, VP; of c_noise, EDM).
  m.embedding_type = "fourier"
  m.fourier_scale = 16.0
  m.init_scale = 0.0
  m.num_groups = 32
  # songunet only (EDM's networks/SongUNet): augmentation-label width (EDM: 9), noise
  # embedding width multiplier (1 DDPM++, 2 NCSN++), encoder standard | skip | residual,
  # decoder standard | skip; its resampling filter is fir_kernel ((1, 1) for DDPM++).
  m.augment_dim = 0
  m.channel_mult_noise = 1
  m.encoder_type = "standard"
  m.decoder_type = "standard"

  # -------------------------------------------------------------- sampling
  s = config.sampling
  s.method = "pc"                     # pc | ode | edm_heun | dpm_solver
  s.predictor = "euler_maruyama"      # pc: euler_maruyama | reverse_diffusion | ancestral_sampling | none
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

  # ------------------------------------------------------------------ eval
  e = config.eval
  e.hutchinson = "rademacher"         # bits/dim: rademacher | gaussian | exact trace
  e.ode_solver = "tsit5"
  e.ode_rtol = 1e-5
  e.ode_atol = 1e-5
  return config
