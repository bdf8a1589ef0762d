"""The score-based family: Song et al. 2021 (score SDEs) and Karras et al. 2022 (EDM).

One network, four ways to read it (config.sde.type):
- 'vesde'    (NCSN++): score(x, t) = F(x, log sigma_t) / sigma_t      (score_sde's
              scale_by_sigma; the network sees log sigma through Fourier features);
- 'vpsde', 'subvpsde' (DDPM++): score(x, t) = -F(x, 999 t) / std_t    (F predicts the
              noise; positional embedding of 999 t as score_sde);
- 'edm':      D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)        (EDM eq. 7).
With `sde.continuous=False` the VE/VP models train the discrete SMLD / DDPM losses on
`sde.num_scales` levels instead (score_sde's `ncsn` / `ddpm` rows).

Every sampler works with every type: an EDM denoiser is also the score of the VE SDE
with sigma(t) = sigma_min (sigma_max / sigma_min)^t, since x = x0 + sigma n in both
(score = (D - x) / sigma^2); an SDE score gives an EDM denoiser through Tweedie's formula
(models/sde.py). The test-set bits/dim come from the probability-flow ODE
(evaluation/ode_likelihood.py) of that SDE, so EDM models get a likelihood too.

Class-conditional models (model.conditional) can drop labels to the null label at
rate config.guidance.p_uncond in training and sample with classifier-free guidance
of weight config.guidance.weight (Ho & Salimans 2022, eq. 6, applied to the score or
the EDM denoiser: both are affine in eps with condition-free coefficients); the
bits/dim stay unguided.

Data are scaled to [-1, 1] (`sde.data_centered`; score_sde's VE models see [0, 1]);
EDM's sigma_data = 0.5 is the std of CIFAR-10 in [-1, 1].

Editing (train/edit_mode.py, sampling/editing.py: inpainting, colourisation, SDEdit, DDIM
interpolation) reads the SDE as a discrete DDPM process (`edit_diffusion`,
`eps_fn_from_score`): any Gaussian perturbation x = m x0 + s z is a VP diffusion after
rescaling by r = sqrt(m^2 + s^2), x / r = sqrt(abar) x0 + sqrt(1 - abar) z with
abar = m^2 / r^2, and the noise prediction is E[z | x] = -s score(x, t).
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from datasets import transforms
from evaluation import ode_likelihood
from models import diffusion as diffusion_lib
from models import ncsnpp, sde as sde_lib, unet
from sampling import common as sampling_common
from sampling import guidance as guidance_lib
from sampling import sde_samplers as sde_sampling
from train import contract
from train import optim as optim_lib
from train import score_losses
from train.state import DTYPES, TrainState

SDE_TYPES = ("vesde", "vpsde", "subvpsde", "edm")
NETWORKS = ("ncsnpp", "songunet", "ddpm_unet")
SAMPLERS = ("pc", "ode", "edm_heun", "dpm_solver")


def scale_images(images_uint8: jax.Array, centered: bool) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (centered) or [0, 1] (score_sde's VE models)."""
  if centered:
    return transforms.uint8_to_centered(images_uint8)
  return transforms.uint8_to_unit(images_uint8)


def _build_network(model_config: ml_collections.ConfigDict, out_channels: int,
                   num_classes: int):
  m = model_config
  dtype = DTYPES[m.dtype]
  if m.center_input and m.name != "ncsnpp":
    raise ValueError(f"config.model.center_input=True is an ncsnpp option (score_sde's "
                     f"2x - 1 of data in [0, 1]); config.model.name is {m.name!r}.")
  if m.name == "ddpm_unet":      # Ho et al.'s U-Net: cheap runs and comparisons
    return unet.UNet(
        ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv, out_channels=out_channels,
        num_classes=num_classes, num_groups=m.num_groups, dtype=dtype,
        fused_attention=m.fused_attention, remat=m.remat,
        coordinate_channels=m.coordinate_channels)
  common = dict(attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                embedding_type=m.embedding_type, fourier_scale=m.fourier_scale,
                num_classes=num_classes, num_groups=m.num_groups,
                out_channels=out_channels, dtype=dtype)
  if m.name == "songunet":
    return ncsnpp.SongUNet(
        model_channels=m.ch, channel_mult=tuple(m.ch_mult), num_blocks=m.num_res_blocks,
        resample_filter=tuple(m.fir_kernel), augment_dim=m.augment_dim,
        channel_mult_noise=m.channel_mult_noise, encoder_type=m.encoder_type,
        decoder_type=m.decoder_type, **common)
  return ncsnpp.NCSNpp(
      nf=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
      center_input=m.center_input,
      resamp_with_conv=m.resamp_with_conv, fir=m.fir,
      fir_kernel=tuple(m.fir_kernel), skip_rescale=m.skip_rescale,
      resblock_type=m.resblock_type, progressive=m.progressive,
      progressive_input=m.progressive_input, progressive_combine=m.progressive_combine,
      init_scale=m.init_scale, **common)


def _build_sde(sde_config: ml_collections.ConfigDict):
  """The forward SDE. EDM's is the VE SDE between its sigma_min and sigma_max."""
  s = sde_config
  if s.type in ("vesde", "edm"):
    return sde_lib.VESDE(sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                         num_scales=s.num_scales)
  cls = sde_lib.VPSDE if s.type == "vpsde" else sde_lib.SubVPSDE
  return cls(beta_min=s.beta_min, beta_max=s.beta_max, num_scales=s.num_scales)


# ------------------------------------------------- editing: the SDE as a DDPM process
# sampling/editing.py works with eps_fn(x_vp, level index) and a GaussianDiffusion, in
# DDPM's convention x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps with x0 in [-1, 1]. Any
# Gaussian perturbation x = m x0 + s z is such a process after rescaling by
# r = sqrt(m^2 + s^2): x / r = sqrt(abar) x0 + sqrt(1 - abar) z, abar = m^2 / r^2, and
# its noise prediction is E[z | x] = -s score(x, t) (Tweedie). Data in [0, 1]
# (sde.data_centered=False) are x0_model = (x0 + 1) / 2, so x = m x0_model + s z gives
# 2x - m = m x0 + (2s) z: the edit space has m' = m, s' = 2s, and x = (x' + m) / 2.
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def edit_level_times(forward_sde: sde_lib.SDE, num_levels: int,
                     sample_eps: float) -> np.ndarray:
  """t_i = sample_eps + (T - sample_eps) i / (N - 1), i = 0..N-1 (float64).

  Level 0 (t = sample_eps) is the least noisy, level N - 1 (t = T) the prior.
  """
  if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
    raise ValueError(f"Editing needs config.sde.num_scales >= 2 levels, got {num_levels!r}.")
  if not 0.0 <= float(sample_eps) < float(forward_sde.T):
    raise ValueError(f"config.sde.sample_eps={sample_eps} must be in [0, T={forward_sde.T}).")
  fraction = np.arange(num_levels, dtype=np.float64) / (num_levels - 1)
  return float(sample_eps) + (float(forward_sde.T) - float(sample_eps)) * fraction


def edit_signal_noise(forward_sde: sde_lib.SDE, times: np.ndarray,
                      data_centered: bool) -> tuple[np.ndarray, np.ndarray]:
  """(m, s') of x' = m x0 + s' z in the edit code's [-1, 1] data space (float64).

  m = alpha(t); s' = sigma(t) for centered data, 2 sigma(t) for data in [0, 1].
  """
  times = np.asarray(times, np.float64)
  m = np.broadcast_to(np.asarray(forward_sde.alpha(times), np.float64), times.shape)
  s = np.broadcast_to(np.asarray(forward_sde.sigma(times), np.float64), times.shape)
  return m, (s if data_centered else 2.0 * s)


def edit_alphas_cumprod(forward_sde: sde_lib.SDE, times: np.ndarray,
                        data_centered: bool) -> np.ndarray:
  """abar_i = m_i^2 / (m_i^2 + s'_i^2) of the levels at `times` (float64)."""
  m, s = edit_signal_noise(forward_sde, times, data_centered)
  return np.square(m) / (np.square(m) + np.square(s))


def edit_diffusion(forward_sde: sde_lib.SDE, num_levels: int, sample_eps: float,
                   data_centered: bool) -> diffusion_lib.GaussianDiffusion:
  """The GaussianDiffusion of `num_levels` levels of `forward_sde` (see `edit_level_times`)."""
  times = edit_level_times(forward_sde, num_levels, sample_eps)
  abar = edit_alphas_cumprod(forward_sde, times, data_centered)
  try:
    betas = diffusion_lib.betas_from_alphas_cumprod(abar)
  except ValueError as error:
    raise ValueError(
        f"{error} Editing reads the SDE at config.sde.num_scales={num_levels} times from "
        f"config.sde.sample_eps={sample_eps} to T; the noise must grow strictly between "
        "them (VP / sub-VP have no noise at t = 0: use sample_eps > 0; fewer "
        "num_scales if levels coincide).") from None
  return diffusion_lib.GaussianDiffusion.from_betas(betas)


def eps_fn_from_score(score_fn: sde_lib.ScoreFn, forward_sde: sde_lib.SDE,
                      times: np.ndarray, data_centered: bool) -> EpsFn:
  """eps_fn(x_vp, level i) = E[z | x] = -sigma(t_i) score(x, t_i) of the VP-read SDE.

  x_vp is in the DDPM convention of the levels (`edit_alphas_cumprod`): the model's
  input is x' = r_i x_vp (centered data) or (r_i x_vp + m_i) / 2 (data in [0, 1]),
  r_i = sqrt(m_i^2 + s'_i^2). i: an integer scalar or [B].
  """
  times = np.asarray(times, np.float64)
  m, s_edit = edit_signal_noise(forward_sde, times, data_centered)
  s_model = s_edit if data_centered else 0.5 * s_edit
  table = {k: jnp.asarray(v, jnp.float32) for k, v in dict(
      t=times, m=m, s=s_model, r=np.sqrt(np.square(m) + np.square(s_edit))).items()}

  def eps_fn(x, t):
    index = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    r = sde_lib.broadcast_to_rank(table["r"][index], x.ndim)
    x_model = r * x
    if not data_centered:
      x_model = 0.5 * (x_model + sde_lib.broadcast_to_rank(table["m"][index], x.ndim))
    score = score_fn(x_model, table["t"][index])
    return -sde_lib.broadcast_to_rank(table["s"][index], x.ndim) * score
  return eps_fn


class ScoreSDE(contract.Family):
  """Score-based diffusion over VE / VP / sub-VP SDEs or EDM's preconditioning."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    self.config = config
    m, s, smp = config.model, config.sde, config.sampling
    if s.type not in SDE_TYPES:
      raise ValueError(f"config.sde.type={s.type!r}; choose one of {SDE_TYPES}.")
    if m.name not in NETWORKS:
      raise ValueError(f"config.model.name={m.name!r}; choose one of {NETWORKS}.")
    if smp.method not in SAMPLERS:
      raise ValueError(f"config.sampling.method={smp.method!r}; choose one of {SAMPLERS}.")
    if m.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={m.dtype!r}; choose {tuple(DTYPES)}.")
    if m.conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    if not s.continuous and s.type not in ("vesde", "vpsde"):
      raise ValueError("config.sde.continuous=False (the discrete SMLD / DDPM losses) "
                       f"needs sde.type 'vesde' or 'vpsde', not {s.type!r}.")
    if m.center_input and s.data_centered:
      raise ValueError("config.model.center_input=True maps data in [0, 1] to [-1, 1] "
                       "inside the network: it needs config.sde.data_centered=False.")
    if s.importance_sampling and not s.likelihood_weighting:
      raise ValueError("config.sde.importance_sampling=True needs "
                       "config.sde.likelihood_weighting=True.")
    g = config.guidance
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes if m.conditional else 0
    # The null label of guidance is the extra label row num_classes.
    self.conditioning = guidance_lib.Conditioning(
        kind="class" if self.num_classes else "none", num_classes=self.num_classes,
        null_value=self.num_classes, p_uncond=float(g.p_uncond),
        guidance_weight=float(g.weight))
    self.network = _build_network(m, image_shape[-1], self.num_classes)
    self.sde = _build_sde(s)
    if not s.continuous and s.type == "vpsde":
      self.sde.discrete_betas   # raises now, before compiling, if N is too small
    self.tx = optim_lib.make_optimizer(config.optim)

  # ------------------------------------------------------------------ networks
  def _raw_fn(self, params, y, train: bool, rng):
    """F(x, noise_labels) of the network, in float32."""
    rngs = {"dropout": rng} if train else {}

    def raw(x, noise_labels):
      noise_labels = jnp.broadcast_to(jnp.reshape(noise_labels, (-1,)), (x.shape[0],))
      out = self.network.apply({"params": params}, x, noise_labels, y, train=train,
                               rngs=rngs)
      return out.astype(jnp.float32)
    return raw

  def _noise_labels_from_sigma(self, sigma):
    """What the network is told about the noise level sigma of a VE / EDM input."""
    if self.config.model.embedding_type == "fourier":
      return jnp.log(sigma)
    return sigma

  def denoiser_fn(self, params, y=None, *, train=False, rng=None):
    """EDM's D(x, sigma) (type 'edm'), or Tweedie's E[x0 | x] from the SDE's score."""
    if self.config.sde.type != "edm":
      return sde_lib.edm_denoiser_from_score(self.score_fn(params, y), self.sde)
    return score_losses.edm_denoiser(self._raw_fn(params, y, train, rng),
                                     sigma_data=self.config.sde.sigma_data)

  def score_fn(self, params, y=None, *, train=False, rng=None):
    """s(x, t) ~ grad_x log p_t(x) on the continuous time axis of `self.sde`."""
    s = self.config.sde
    if s.type == "edm":
      denoise = self.denoiser_fn(params, y, train=train, rng=rng)

      def edm_score(x, t):
        sigma = sde_lib.broadcast_to_rank(self.sde.sigma(t), x.ndim)
        return (denoise(x, self.sde.sigma(t)) - x) / jnp.square(sigma)
      return edm_score
    raw = self._raw_fn(params, y, train, rng)
    if s.type == "vesde":
      if not s.continuous:   # the network was trained on SMLD level indices
        return sde_lib.score_from_smld_model(self._smld_model(raw), self.sde)

      def ve_score(x, t):
        sigma = self.sde.sigma(t)
        return raw(x, self._noise_labels_from_sigma(sigma)) / \
            sde_lib.broadcast_to_rank(sigma, x.ndim)
      return ve_score
    if not s.continuous:
      return sde_lib.score_from_ddpm_model(self._ddpm_eps(raw), self.sde)

    def vp_score(x, t):
      std = sde_lib.broadcast_to_rank(self.sde.sigma(t), x.ndim)
      return -raw(x, 999.0 * t) / std
    return vp_score

  def _smld_model(self, raw):
    """SMLD: the score at level `label` (0 = sigma_max) is F(x, sigma) / sigma."""
    descending = jnp.asarray(self.sde.discrete_sigmas[::-1].copy(), jnp.float32)

    def model_fn(x, labels):
      sigma = descending[labels]
      return raw(x, self._noise_labels_from_sigma(sigma)) / \
          sde_lib.broadcast_to_rank(sigma, x.ndim)
    return model_fn

  @staticmethod
  def _ddpm_eps(raw):
    """DDPM: the network predicts the noise at integer step `label`."""
    return lambda x, labels: raw(x, labels.astype(jnp.float32))

  # ------------------------------------------------------------------ training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    x = scale_images(example_batch["image"][:1], self.config.sde.data_centered)
    y = self._labels(example_batch)
    y = None if y is None else y[:1]
    params = self.network.init({"params": rng}, x, jnp.ones((1,), jnp.float32), y,
                               train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def _labels(self, batch):
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def per_example_loss(self, params, batch, rng):
    s = self.config.sde
    x0 = scale_images(batch["image"], s.data_centered)
    y = self._labels(batch)
    y = self.conditioning.drop(y, jax.random.fold_in(rng, 2))   # Ho & Salimans Alg. 1
    loss_rng, dropout_rng = jax.random.split(rng)
    raw = self._raw_fn(params, y, True, dropout_rng)
    if s.type == "edm":
      return score_losses.edm_loss(
          score_losses.edm_denoiser(raw, sigma_data=s.sigma_data), loss_rng, x0,
          sigma_data=s.sigma_data, p_mean=s.p_mean, p_std=s.p_std,
          reduce_mean=s.reduce_mean)
    if not s.continuous:
      if s.type == "vesde":
        return score_losses.smld_loss(self._smld_model(raw), self.sde, loss_rng, x0,
                                      reduce_mean=s.reduce_mean)
      return score_losses.ddpm_loss(self._ddpm_eps(raw), self.sde, loss_rng, x0,
                                    reduce_mean=s.reduce_mean)
    return score_losses.dsm_loss(
        self.score_fn(params, y, train=True, rng=dropout_rng), self.sde, loss_rng, x0,
        eps=s.train_eps, reduce_mean=s.reduce_mean,
        likelihood_weighting=s.likelihood_weighting,
        importance_sampling=s.importance_sampling)

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    loss_fn = lambda p: jnp.mean(self.per_example_loss(p, batch, rng))
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return optim_lib.apply_gradients(state, grads, self.config.optim, loss=loss)

  # ---------------------------------------------------------------- evaluation
  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim through the probability-flow ODE (Song et al. 2021, app. D.2)."""
    ev = self.config.eval
    out = ode_likelihood.ode_bpd(
        self.score_fn(params, self._labels(batch)), self.sde, batch["image"], rng,
        hutchinson=ev.hutchinson, rtol=ev.ode_rtol, atol=ev.ode_atol,
        solver=ev.ode_solver, eps=self.config.sde.likelihood_eps,
        data_range=self._data_range)
    return dict(bpd_ode=out.bpd,
                likelihood_nfe=jnp.broadcast_to(out.nfe, out.bpd.shape).astype(jnp.float32))

  # ------------------------------------------------------------------ sampling
  def guided_fns(self, params, y, guidance_weight: float | None = None):
    """(score_fn, denoiser_fn) guided with config.guidance.weight (eq. 6).

    guidance_weight overrides config.guidance.weight. Weight 0 (or an unconditional
    model) gives the plain conditional functions.
    """
    c = self.conditioning
    score = c.guide(lambda x, t, y: self.score_fn(params, y)(x, t), y, guidance_weight)
    denoiser = c.guide(lambda x, sigma, y: self.denoiser_fn(params, y)(x, sigma), y,
                       guidance_weight)
    return score, denoiser

  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    return self.sample_with_nfe(params, rng, num_samples)[0]

  def sample_with_condition(self, params, rng: jax.Array, condition: jax.Array | None,
                            num_samples: int) -> jax.Array:
    """uint8 NHWC samples of p(x | labels `condition` [num_samples]), guided by
    config.guidance.weight; None for an unconditional model (train/edit_mode.py --label)."""
    self.conditioning.check(condition)
    return self.sample_with_nfe(params, rng, num_samples, condition=condition)[0]

  def sample_with_nfe(self, params, rng: jax.Array, num_samples: int,
                      condition: jax.Array | None = None):
    """uint8 NHWC samples and the number of network evaluations it took.

    Conditional models cycle through the classes unless `condition` gives the labels.
    """
    smp, s = self.config.sampling, self.config.sde
    if condition is not None:
      y = jnp.asarray(condition, jnp.int32)
    else:
      y = sampling_common.cycled_labels(num_samples, self.num_classes)
    shape = (num_samples, *self.image_shape)
    score_fn, denoiser_fn = self.guided_fns(params, y)
    if smp.method == "pc":
      out = sde_sampling.pc_sample(
          score_fn, self.sde, rng, shape, predictor=smp.predictor,
          corrector=smp.corrector, snr=smp.snr, n_steps=smp.n_steps_each,
          denoise=smp.noise_removal, eps=s.sample_eps)
    elif smp.method == "ode":
      out = sde_sampling.ode_sample(
          score_fn, self.sde, rng, shape, rtol=smp.ode_rtol,
          atol=smp.ode_atol, solver=smp.ode_solver, eps=s.sample_eps,
          denoise=smp.noise_removal)
    elif smp.method == "edm_heun":
      sigma_min, sigma_max = self._sigma_range()
      out = sde_sampling.edm_sample(
          denoiser_fn, rng, shape, num_steps=smp.num_steps,
          sigma_min=sigma_min, sigma_max=sigma_max, rho=smp.rho, s_churn=smp.s_churn,
          s_min=smp.s_min, s_max=smp.s_max, s_noise=smp.s_noise,
          # EDM's preconditioned network takes any sigma; an SDE's score network
          # only those of t in [sample_eps, T].
          sigma_limit=None if s.type == "edm" else sigma_max)
    elif s.type in ("vesde", "edm"):   # dpm_solver in sigma space (alpha = 1)
      sigma_min, sigma_max = self._sigma_range()
      out = sde_sampling.dpm_solver_pp_edm_sample(
          denoiser_fn, rng, shape, num_steps=smp.num_steps,
          sigma_min=sigma_min, sigma_max=sigma_max, rho=smp.rho,
          skip_type=smp.skip_type)
    else:
      out = sde_sampling.dpm_solver_pp_sample(
          sde_lib.data_prediction_from_score(score_fn, self.sde), self.sde,
          rng, shape, num_steps=smp.num_steps, skip_type=smp.skip_type, eps=s.sample_eps,
          rho=smp.rho)
    images = out.images if s.data_centered else transforms.unit_to_centered(out.images)
    return transforms.centered_to_uint8(images), out.nfe

  # ------------------------------------------------------------------- editing
  # What train/edit_mode.py and sampling/editing.py need: the SDE read as a DDPM process
  # (`edit_diffusion`; module comment above) and an eps_fn on its levels.
  @functools.cached_property
  def edit_times(self) -> np.ndarray:
    """The times t_i of the N = config.sde.num_scales levels (level 0: sample_eps)."""
    s = self.config.sde
    return edit_level_times(self.sde, s.num_scales, s.sample_eps)

  @functools.cached_property
  def edit_process(self) -> contract.EditProcess:
    """The SDE at `edit_times` as a DDPM process in [-1, 1] data space.

    Edits walk every level (no respacing); the ancestral step is the posterior
    variance beta-tilde ('fixedsmall'), the exact reverse step of a Gaussian process
    read at discrete levels.
    """
    s = self.config.sde
    diffusion = edit_diffusion(self.sde, s.num_scales, s.sample_eps, s.data_centered)
    return contract.EditProcess(
        diffusion=diffusion, sampling_diffusion=diffusion, sampling_timesteps=None,
        var_type="fixedsmall", clip_denoised=bool(self.config.sampling.clip_denoised))

  def edit_eps_fn(self, params, condition: jax.Array | None = None,
                  guidance_weight: float | None = None) -> EpsFn:
    """eps_fn(x_vp, level index) on `diffusion`, for sampling/editing.py.

    The DDPM family's contract: condition holds labels [B] of a class-conditional
    model (its null label gives the unconditional model), None for an unconditional
    one; guided by config.guidance.weight (or guidance_weight) through `guided_fns`.
    Any Gaussian perturbation x = m x0 + s z is a DDPM/VP diffusion after rescaling
    by r = sqrt(m^2 + s^2): x / r = sqrt(abar) x0 + sqrt(1 - abar) z with
    abar = m^2 / r^2, and the noise prediction is E[z | x] = -s score(x, t)
    (`eps_fn_from_score`; data in [0, 1] are mapped to [-1, 1] on the way).
    """
    score_fn, _ = self.guided_fns(params, condition, guidance_weight)
    return eps_fn_from_score(score_fn, self.sde, self.edit_times,
                             self.config.sde.data_centered)

  @property
  def _data_range(self) -> str:
    return "[-1,1]" if self.config.sde.data_centered else "[0,1]"

  def _sigma_range(self) -> tuple[float, float]:
    """The noise levels EDM-style samplers sweep: those of the model's SDE."""
    s = self.config.sde
    if s.type in ("vesde", "edm"):
      return s.sigma_min, s.sigma_max
    # VP / sub-VP: sigma_edm = sigma_t / alpha_t between t = sample_eps and t = T.
    lo = math.exp(-float(self.sde.log_snr(s.sample_eps)))
    hi = math.exp(-float(self.sde.log_snr(self.sde.T)))
    return lo, hi

  def sampler_settings(self) -> dict[str, Any]:
    smp, s = self.config.sampling, self.config.sde
    settings = dict(sampler=smp.method, sde=s.type, use_ema=smp.use_ema)
    if self.num_classes:
      settings.update(guidance_weight=self.conditioning.guidance_weight,
                      p_uncond=self.conditioning.p_uncond)
    if smp.method == "pc":
      p = 0 if smp.predictor == "none" else 1
      c = smp.n_steps_each if smp.corrector == "langevin" else 0
      settings.update(predictor=smp.predictor, corrector=smp.corrector, snr=smp.snr,
                      n_steps_each=smp.n_steps_each, num_scales=s.num_scales,
                      final_denoising_step=smp.noise_removal,
                      nfe=s.num_scales * (p + c), sample_eps=s.sample_eps)
    elif smp.method == "ode":
      settings.update(ode_solver=smp.ode_solver, rtol=smp.ode_rtol, atol=smp.ode_atol,
                      final_denoising_step=smp.noise_removal, sample_eps=s.sample_eps,
                      nfe="adaptive (recorded per batch as nfe_mean)")
    elif smp.method == "edm_heun":
      settings.update(num_steps=smp.num_steps, rho=smp.rho, s_churn=smp.s_churn,
                      s_min=smp.s_min, s_max=smp.s_max, s_noise=smp.s_noise,
                      sigma_range=list(self._sigma_range()),
                      nfe=2 * smp.num_steps - 1, final_denoising_step=True)
    else:
      settings.update(num_steps=smp.num_steps, skip_type=smp.skip_type, rho=smp.rho,
                      nfe=smp.num_steps, final_denoising_step=False)
    return settings
