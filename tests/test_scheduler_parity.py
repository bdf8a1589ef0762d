"""The project's samplers against diffusers' schedulers: same network, same noise.

Issue 19, part 3. Each test runs a fixed closed-form "network" (a random 3x3 channel
mix inside a tanh plus a term in t or sigma, a function of its inputs only, float32 on
both sides) through a project sampler and through the diffusers 0.42 scheduler that
implements the same algorithm, from the same x_T and per-step noise, and compares the
samples; the last two tests do the same with a converted UNet2DModel checkpoint against
DDPMPipeline and DDIMPipeline, as uint8 images. The project is NHWC, diffusers NCHW.

Noise: DDIMScheduler.step takes `variance_noise`, so its draws are numpy's.
DDPMScheduler and ScoreSdeVeScheduler draw inside `step` from a torch.Generator
(randn_tensor on the CPU is torch.randn(shape, generator=...)): a second generator of
the same seed, asked for the same shapes in the same order (x_T, then each step's),
replays the draws, which the project samplers take as `x_init` and `noise`
(sampling/common.step_noises).

Conventions, tested both ways where the project has both:
  clip_sample / clip_denoised: x0 clipped to [-1, 1] (DDPM, DDIM). DDIM then
    recomputes eps from the clipped x0 in the project (as Improved DDPM's ddim_sample)
    and in diffusers only with use_clipped_model_output=True.
  timestep spacing: 'leading' is the project's DDIM 'uniform' (tau_i = i T // S) and
    its respacing into S sections of one step; 'linspace' its 'uniform' respacing;
    'trailing' and steps_offset a respaced process over the kept timesteps.
  set_alpha_to_one=False: DDIM stops at abar_0 = 1 - beta_0, the project at x_0.
  final step: DPM-Solver++ and Heun take a first-order step into sigma = 0
    (final_sigmas_type='zero'; lower_order_final is then moot).
Where diffusers departs from the papers (the project follows the papers):
  DDPMScheduler adds noise on its last step when that step's timestep is not 0
    ('trailing', steps_offset): Ho et al. Algorithm 2 has z = 0 on the last step.
  DDIMScheduler steps from t to t - T // S whatever the spacing, so with 'linspace'
    (or 'trailing' when S does not divide T) it lands on noise levels it then does not
    evaluate at (huggingface/diffusers issues 11347, 12633); DDIM eq. 12 steps between
    successive tau_i. Not compared.
  EDMEulerScheduler evaluates the network before adding the churn noise and uses the
    output at sigma_hat (Karras et al. Algorithm 2 evaluates D at the churned x_hat);
    the project has no EDM Euler sampler, and HeunDiscreteScheduler has no churn, so
    EDM Heun is compared at s_churn = 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from models.diffusion import (  # noqa: E402
    GaussianDiffusion, get_beta_schedule, respaced_diffusion, respaced_timesteps)
from models.sde import VESDE  # noqa: E402
from sampling import ddpm as ddpm_sampling  # noqa: E402
from sampling import sde_samplers  # noqa: E402
from train.score_losses import edm_denoiser  # noqa: E402

SHAPE = (2, 8, 8, 3)        # project layout, NHWC
T = 1000
BETAS = get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=T)
_RNG = np.random.default_rng(19)
MIX = (_RNG.standard_normal((3, 3)) / np.sqrt(3)).astype(np.float32)
MIX2 = (_RNG.standard_normal((3, 3)) / np.sqrt(3)).astype(np.float32)
BIAS = np.array([0.1, -0.2, 0.05], np.float32)
# Both sides compute in float32, so differences of rounding grow along the chain: up
# to ~1e-5 over tens of steps and ~6e-5 over the 1000-step chain (samples of size ~5,
# unclipped), against a bound of 1e-4 times the samples' size. Every convention
# difference below moves the samples by 1e-2 or more.
RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
  """One torch thread: on 2 shared cores (two pytest workers) more threads only wait
  for each other (the small U-Net's forward pass: 0.25 s on one, 1.2 s on two)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def assert_parity(ours, theirs, what: str) -> None:
  """max |ours - theirs| below RTOL times max(1, max |theirs|); printed with -s."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  difference = float(np.max(np.abs(ours - theirs)))
  bound = RTOL * max(1.0, float(np.max(np.abs(theirs))))
  print(f"{what}: max |project - diffusers| = {difference:.3g} (bound {bound:.3g})")
  assert difference < bound, f"{what}: max |project - diffusers| = {difference:.3g}"


# ------------------------------------------------------------------ the two layouts
def to_torch(x) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def to_numpy(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), 1, -1)


def _mix(x, weights):
  """Channels mixed by `weights` [in, out] in either layout and library."""
  if isinstance(x, torch.Tensor):
    return (x.permute(0, 2, 3, 1) @ torch.from_numpy(weights)).permute(0, 3, 1, 2)
  return x @ weights


def _lib(x):
  return torch if isinstance(x, torch.Tensor) else jnp


def _per_example(values, x):
  """[B] -> broadcastable against x in its layout."""
  return values.reshape((-1,) + (1,) * (x.ndim - 1))


def _bias(x):
  if isinstance(x, torch.Tensor):
    return torch.from_numpy(BIAS)[None, :, None, None]
  return BIAS


# ------------------------------------------------------------- the closed-form nets
def ddpm_eps(x, t):
  """eps(x_t, t) for integer timesteps t [B]: s x + 1.5 a tanh(M x + b), with
  s^2 = 1 - a^2 ~ 1 - abar_t of the linear schedule, so x0 predictions stay O(1)
  and are clipped now and then."""
  xp = _lib(x)
  t = _per_example(t, x).to(torch.float32) if xp is torch else _per_example(
      t.astype(jnp.float32), x)
  a = xp.exp(-0.5 * (1e-4 * t + 1e-5 * t * t))
  s = xp.sqrt(1.0 - a * a)
  return s * x + 1.5 * a * xp.tanh(_mix(x, MIX) + _bias(x))


def ddpm_eps_and_v(x, t):
  """[eps, v] for var_type 'learned_range': v = tanh(M' x) in [-1, 1]."""
  xp = _lib(x)
  v = xp.tanh(_mix(x, MIX2))
  axis = 1 if xp is torch else -1
  return (torch.cat if xp is torch else jnp.concatenate)([ddpm_eps(x, t), v], axis)


def vp_eps(x_in, sigma):
  """eps(x_vp, sigma) of a VP network at sigma = sqrt((1 - abar) / abar):
  s x + 1.5 a tanh(M x + b) with a = 1 / sqrt(1 + sigma^2), s = sigma a."""
  xp = _lib(x_in)
  sigma = _per_example(sigma, x_in)
  a = 1.0 / xp.sqrt(1.0 + sigma * sigma)
  return sigma * a * x_in + 1.5 * a * xp.tanh(_mix(x_in, MIX) + _bias(x_in))


def vp_denoiser(x, sigma):
  """The project's EDM denoiser D(x, sigma) of `vp_eps` (x = x_vp / alpha, Karras et
  al. sec. 4): x - sigma eps(x / sqrt(1 + sigma^2), sigma)."""
  sigma = jnp.broadcast_to(sigma, (x.shape[0],))
  scale = _per_example(sigma, x)
  return x - scale * vp_eps(x / jnp.sqrt(1.0 + scale * scale), sigma)


def edm_raw(x_in, c_noise):
  """F(c_in x, c_noise) of EDM's preconditioned network (Karras et al. eq. 7)."""
  xp = _lib(x_in)
  c_noise = _per_example(c_noise, x_in)
  return xp.tanh(_mix(x_in, MIX) + _bias(x_in)) + 0.1 * c_noise * x_in


def ve_score(x, sigma):
  """A score at noise level sigma: (0.5 tanh(M x + b) - x) / (0.25 + sigma^2)."""
  xp = _lib(x)
  sigma = _per_example(sigma, x)
  return (0.5 * xp.tanh(_mix(x, MIX) + _bias(x)) - x) / (0.25 + sigma * sigma)


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _torch_timesteps(t, batch_size: int) -> torch.Tensor:
  return torch.full((batch_size,), int(t), dtype=torch.int64)


def _generator_draws(seed: int, count: int, shape=SHAPE) -> list[np.ndarray]:
  """The first `count` NCHW draws a torch.Generator(seed) gives randn_tensor, NHWC."""
  generator = torch.Generator().manual_seed(seed)
  nchw = (shape[0], shape[3], shape[1], shape[2])
  return [to_numpy(torch.randn(nchw, generator=generator)) for _ in range(count)]


# ------------------------------------------------------------------ DDPM, ancestral
def _kept_timesteps(spacing: str, num_steps: int) -> np.ndarray:
  """The project's kept timesteps for diffusers' spacing, from its own respacing
  where it has one (checked against diffusers' list by the caller)."""
  if spacing == "leading":       # S sections of one step each: i T // S
    return respaced_timesteps(T, None, ",".join(["1"] * num_steps))
  if spacing == "linspace":      # one section, first and last kept: the 'uniform' one
    return respaced_timesteps(T, num_steps, "uniform")
  # 'trailing' (T/S - 1, 2T/S - 1, ..., T - 1) has no respacing string: kept as given.
  return np.arange(T // num_steps - 1, T, T // num_steps)


def _diffusers_ancestral(variance_type, clip, spacing, num_steps, seed):
  scheduler = diffusers.DDPMScheduler(
      num_train_timesteps=T, beta_schedule="linear", variance_type=variance_type,
      clip_sample=clip, timestep_spacing=spacing)
  if num_steps is not None:
    scheduler.set_timesteps(num_steps)
  generator = torch.Generator().manual_seed(seed)
  x = torch.randn((SHAPE[0], SHAPE[3], SHAPE[1], SHAPE[2]), generator=generator)
  net = ddpm_eps_and_v if variance_type == "learned_range" else ddpm_eps
  with torch.no_grad():
    for t in scheduler.timesteps:
      out = scheduler.step(net(x, _torch_timesteps(t, SHAPE[0])), t, x,
                           generator=generator)
      x = out.prev_sample
  # The last step's mean: its clipped x0 (the posterior mean has coefficients 1, 0).
  return to_numpy(x), to_numpy(out.pred_original_sample), scheduler.timesteps.numpy()


_VARIANCES = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small",
              "learned_range": "learned_range"}


@pytest.mark.parametrize("var_type,spacing,num_steps,clip", [
    # All T = 1000 steps (diffusers without set_timesteps).
    ("fixedlarge", "leading", None, True), ("fixedsmall", "leading", None, False),
    # Respaced to 10 steps by each spacing, clipped; unclipped once per variance.
    *[(v, s, 10, True) for v in _VARIANCES
      for s in ("leading", "linspace", "trailing")],
    *[(v, "leading", 10, False) for v in _VARIANCES]])
def test_ancestral_matches_ddpm_scheduler(var_type, spacing, num_steps, clip):
  """Ho et al. Algorithm 2 over all T steps, or respaced to 10 (Nichol & Dhariwal
  sec. 4: beta'_i = 1 - abar_{t_i} / abar_{t_(i-1)}, which is diffusers'
  current_beta_t); fixed_small is beta-tilde (eq. 7), fixed_large beta', learned_range
  eq. 15 of Nichol & Dhariwal.

  The last step returns the mean (Ho et al. Algorithm 2: z = 0 at t = 1; the Improved
  DDPM code masks the noise on the respaced index 0). diffusers tests the original
  timestep instead (`t > 0`), so where the last kept timestep is not 0 ('trailing':
  99; steps_offset) it adds noise of variance beta'_0 = 1 - abar_99 (fixed_large) to
  the final image; the project is compared with that step's mean, and the added
  noise is checked to be exactly sqrt(beta'_0) z."""
  seed = 3
  theirs, last_mean, timesteps = _diffusers_ancestral(_VARIANCES[var_type], clip,
                                                      spacing, num_steps, seed)
  if num_steps is None:
    diffusion, timestep_map = GaussianDiffusion.from_betas(BETAS), None
    np.testing.assert_array_equal(timesteps, np.arange(T)[::-1])
  else:
    timestep_map = _kept_timesteps(spacing, num_steps)
    np.testing.assert_array_equal(timesteps, timestep_map[::-1])
    diffusion = respaced_diffusion(BETAS, timestep_map)
  steps = diffusion.num_timesteps
  draws = _generator_draws(seed, steps)      # x_T, then the steps with t > 0
  noise = np.stack(draws[1:] + [np.zeros(SHAPE, np.float32)])
  net = ddpm_eps_and_v if var_type == "learned_range" else ddpm_eps
  ours = ddpm_sampling.ancestral_sample(
      net, diffusion, jax.random.key(0), SHAPE, var_type=var_type, clip_denoised=clip,
      timestep_map=timestep_map, x_init=draws[0], noise=noise).images
  if timesteps[-1] == 0:
    np.testing.assert_array_equal(theirs, last_mean)
  else:
    last_noise = theirs - last_mean
    if var_type == "fixedlarge":
      beta = 1.0 - np.cumprod(1.0 - BETAS)[timesteps[-1]]
      z = _generator_draws(seed, steps + 1)[-1]
      np.testing.assert_allclose(last_noise, np.sqrt(beta) * z, atol=1e-5)
    print(f"ancestral {var_type} {spacing} {num_steps} clip={clip}: diffusers' noise "
          f"on its last step (t = {timesteps[-1]}): max {_max_diff(ours, theirs):.3g}")
    theirs = last_mean
  assert_parity(ours, theirs, f"ancestral {var_type} {spacing} {num_steps} clip={clip}")


def test_ancestral_noise_seam_is_the_rng_draw(fast_compile):
  """noise=None is the rng's draws: passing them explicitly gives the same samples."""
  diffusion = respaced_diffusion(BETAS, _kept_timesteps("leading", 10))
  rng = jax.random.key(4)
  init_rng, loop_rng = jax.random.split(rng)
  noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(loop_rng, i), SHAPE))(
      jnp.arange(10))
  kwargs = dict(timestep_map=_kept_timesteps("leading", 10), var_type="fixedsmall")
  own = ddpm_sampling.ancestral_sample(ddpm_eps, diffusion, rng, SHAPE, **kwargs).images
  replayed = ddpm_sampling.ancestral_sample(
      ddpm_eps, diffusion, jax.random.key(9), SHAPE,
      x_init=jax.random.normal(init_rng, SHAPE), noise=noise, **kwargs).images
  # The same draws; XLA may fuse a given array differently from in-loop draws (1 ulp).
  np.testing.assert_allclose(own, replayed, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="noise has shape"):
    ddpm_sampling.ancestral_sample(ddpm_eps, diffusion, rng, SHAPE, noise=noise[:9],
                                   **kwargs)


# ------------------------------------------------------------------------------ DDIM
def _diffusers_ddim(x_init, noise, *, eta, clip, clipped_eps, spacing, num_steps,
                    steps_offset=0, set_alpha_to_one=True):
  scheduler = diffusers.DDIMScheduler(
      num_train_timesteps=T, beta_schedule="linear", clip_sample=clip,
      set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset,
      timestep_spacing=spacing)
  scheduler.set_timesteps(num_steps)
  x = to_torch(x_init)
  with torch.no_grad():
    for i, t in enumerate(scheduler.timesteps):
      eps = ddpm_eps(x, _torch_timesteps(t, SHAPE[0]))
      x = scheduler.step(eps, t, x, eta=eta, use_clipped_model_output=clipped_eps,
                         variance_noise=to_torch(noise[i]) if eta > 0 else None
                         ).prev_sample
  return to_numpy(x), scheduler.timesteps.numpy()


def _ddim_draws(num_steps: int, seed: int = 5):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(SHAPE).astype(np.float32),
          rng.standard_normal((num_steps, *SHAPE)).astype(np.float32))


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing,num_steps,steps_offset,clip", [
    ("leading", 10, 0, True), ("leading", 10, 0, False), ("leading", 7, 0, True),
    ("leading", 10, 1, True), ("trailing", 10, 0, True)])
def test_ddim_matches_ddim_scheduler(eta, spacing, num_steps, steps_offset, clip):
  """DDIM eq. 12 with sigma of eq. 16 (eta 0 and 1), the last step to abar = 1.

  With clipping the project recomputes eps from the clipped x0 (eq. 12 then stays on
  the line through x_t), which is diffusers' use_clipped_model_output=True. 'leading'
  with steps_offset (Stable Diffusion's 1) and 'trailing' visit timesteps that no DDIM
  spacing of the project has: the project walks the respaced process over them."""
  x_init, noise = _ddim_draws(num_steps)
  theirs, timesteps = _diffusers_ddim(
      x_init, noise, eta=eta, clip=clip, clipped_eps=True, spacing=spacing,
      num_steps=num_steps, steps_offset=steps_offset)
  kwargs = dict(num_steps=num_steps, eta=eta, clip_denoised=clip, x_init=x_init,
                noise=noise)
  if spacing == "leading" and steps_offset == 0:
    ours = ddpm_sampling.ddim_sample(
        ddpm_eps, GaussianDiffusion.from_betas(BETAS), jax.random.key(0), SHAPE,
        step_spacing="uniform", **kwargs).images
    np.testing.assert_array_equal(
        timesteps, ddpm_sampling.ddim_timesteps(T, num_steps, "uniform")[::-1])
  else:
    kept = timesteps[::-1].copy()
    if spacing == "leading":
      np.testing.assert_array_equal(
          kept, ddpm_sampling.ddim_timesteps(T, num_steps, "uniform") + steps_offset)
    ours = ddpm_sampling.ddim_sample(
        ddpm_eps, respaced_diffusion(BETAS, kept), jax.random.key(0), SHAPE,
        timestep_map=kept, **kwargs).images
  assert_parity(ours, theirs, f"ddim eta={eta} clip={clip} {spacing} S={num_steps} "
                f"steps_offset={steps_offset}")


def test_ddim_conventions_the_project_does_not_follow():
  """Two diffusers settings with no project counterpart, and by how much they differ.

  use_clipped_model_output=False (DDIMScheduler.step's and DDIMPipeline's default):
  x0 is clipped but the direction term keeps the network's eps, so x_prev leaves the
  eq. 12 line through x_t; the project (as Improved DDPM's ddim_sample) recomputes eps.
  set_alpha_to_one=False: the last step stops at abar_0 = 1 - beta_0 (sqrt(beta_0) =
  0.01 of noise left) instead of at x_0 as in DDIM (alpha_0 := 1).
  """
  num_steps = 10
  x_init, noise = _ddim_draws(num_steps)
  ours = ddpm_sampling.ddim_sample(
      ddpm_eps, GaussianDiffusion.from_betas(BETAS), jax.random.key(0), SHAPE,
      num_steps=num_steps, x_init=x_init).images
  common = dict(eta=0.0, clip=True, spacing="leading", num_steps=num_steps)
  same, _ = _diffusers_ddim(x_init, noise, clipped_eps=True, **common)
  unclipped_eps, _ = _diffusers_ddim(x_init, noise, clipped_eps=False, **common)
  short, _ = _diffusers_ddim(x_init, noise, clipped_eps=True, set_alpha_to_one=False,
                             **common)
  assert_parity(ours, same, "ddim as the project")
  differences = [_max_diff(ours, other) for other in (unclipped_eps, short)]
  print("ddim conventions: max |project - diffusers| = {:.3g} "
        "(use_clipped_model_output=False), {:.3g} (set_alpha_to_one=False)"
        .format(*differences))
  assert differences[0] > 1e-2 and differences[1] > 1e-3


# ------------------------------------------------------------------- DPM-Solver++(2M)
def _diffusers_dpm(scheduler, x_init, num_steps, *, net, network_input):
  """The pipelines' loop: scale_model_input, the network, step."""
  scheduler.set_timesteps(num_steps)
  x = to_torch(x_init)
  with torch.no_grad():
    for i, t in enumerate(scheduler.timesteps):
      x_in = scheduler.scale_model_input(x, t)
      x = scheduler.step(net(x_in, network_input(scheduler, i, t)), t, x).prev_sample
  return to_numpy(x)


def _vp_sigma_range(scheduler) -> tuple[float, float]:
  """(sigma_min, sigma_max) of the DDPM schedule, sigma = sqrt((1 - abar) / abar) at
  t = 0 and T - 1, as the scheduler has them.

  diffusers computes abar in float32, so 1 - abar_0 ~ 1e-4 keeps ~3 digits: its
  sigma_min is 8e-5 above the float64 value (models/diffusion.py computes its schedule
  in float64 for this reason). The project's samplers take the range as arguments;
  they get diffusers' here, so that the test compares the updates.
  """
  abar = scheduler.alphas_cumprod.numpy()
  sigmas = np.sqrt((1.0 - abar) / abar)
  exact = np.sqrt(1.0 / np.cumprod(1.0 - BETAS) - 1.0)
  np.testing.assert_allclose(sigmas[[0, -1]], exact[[0, -1]], rtol=2e-4)
  return float(sigmas[0]), float(sigmas[-1])


def _sigma_of_step(scheduler, i, t) -> torch.Tensor:
  """The network's noise level input: the scheduler's own sigma of call i. (Its
  U-Net would get the timestep diffusers interpolates from sigma: an interface of
  discrete-time networks, not part of the update; both sides see sigma here.)"""
  del t
  return scheduler.sigmas[i].expand(SHAPE[0])


@pytest.mark.parametrize("schedule,num_steps", [
    ("karras", 8), ("karras", 20), ("lu_lambdas", 12)])
def test_dpm_solver_matches_dpmsolver_multistep_on_the_ddpm_schedule(num_steps,
                                                                    schedule):
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) over the DDPM schedule's sigma
  range, Karras spaced (eq. 5, rho 7) or uniform in log sigma (Lu et al.'s logSNR,
  diffusers' use_lu_lambdas). diffusers steps x_vp = alpha x in VP scaling, the project
  x in EDM scaling (alpha = 1); the update is invariant under that rescaling (divide
  Lu et al.'s x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (e^-h - 1) D by
  alpha_{i+1}) and both end at sigma = 0, alpha = 1: the same images."""
  scheduler = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++",
      solver_order=2, use_karras_sigmas=schedule == "karras",
      use_lu_lambdas=schedule == "lu_lambdas", final_sigmas_type="zero")
  sigma_min, sigma_max = _vp_sigma_range(scheduler)
  x_vp = np.random.default_rng(6).standard_normal(SHAPE).astype(np.float32)
  theirs = _diffusers_dpm(scheduler, x_vp, num_steps, net=vp_eps,
                          network_input=_sigma_of_step)
  ours = sde_samplers.dpm_solver_pp_edm_sample(
      vp_denoiser, jax.random.key(0), SHAPE, num_steps=num_steps, sigma_min=sigma_min,
      sigma_max=sigma_max, rho=7.0,
      skip_type="karras" if schedule == "karras" else "logSNR",
      x_init=x_vp * np.sqrt(1.0 + sigma_max**2)).images
  np.testing.assert_allclose(scheduler.sigmas.numpy()[:-1], np.asarray(
      sde_samplers.edm_sigma_schedule(num_steps, sigma_min, sigma_max)[:-1]
      if schedule == "karras" else np.geomspace(sigma_max, sigma_min, num_steps)),
      rtol=1e-6)
  assert_parity(ours, theirs, f"dpm-solver++(2M) {schedule} N={num_steps}")


@pytest.mark.parametrize("num_steps", [12])
def test_dpm_solver_update_matches_on_discrete_timesteps(num_steps):
  """diffusers' default DPM-Solver++ grid: integer timesteps linspace(0, T-1, N+1)
  rounded, alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t), then sigma = 0. No public
  project sampler takes that grid (the score family's runs on continuous SDE time), so
  this drives the update they share, `_dpm_solver_pp_2m`, in VP scaling (alpha != 1)."""
  scheduler = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=T, beta_schedule="linear", algorithm_type="dpmsolver++",
      solver_order=2, final_sigmas_type="zero")
  x_vp = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
  theirs = _diffusers_dpm(scheduler, x_vp, num_steps, net=ddpm_eps,
                          network_input=lambda s, i, t: _torch_timesteps(t, SHAPE[0]))
  timesteps = scheduler.timesteps.numpy()
  abar = np.cumprod(1.0 - BETAS)
  alphas = np.append(np.sqrt(abar[timesteps]), 1.0)
  sigmas = np.append(np.sqrt(1.0 - abar[timesteps]), 0.0)
  alpha_table = jnp.asarray(np.sqrt(abar), jnp.float32)
  sigma_table = jnp.asarray(np.sqrt(1.0 - abar), jnp.float32)

  def data_fn(x, t):
    t = t.astype(jnp.int32)
    alpha, sigma = (_per_example(table[t], x) for table in (alpha_table, sigma_table))
    return (x - sigma * ddpm_eps(x, t)) / alpha

  second_order = np.ones(num_steps, bool)
  second_order[-1] = False       # first order into sigma = 0
  ours = sde_samplers._dpm_solver_pp_2m(  # pylint: disable=protected-access
      data_fn, jnp.asarray(x_vp), np.append(timesteps, 0).astype(np.float64), alphas,
      sigmas, second_order)
  assert_parity(ours, theirs, f"dpm-solver++(2M) discrete N={num_steps}")


@pytest.mark.parametrize("sigma_schedule,skip_type", [
    ("karras", "karras"), ("exponential", "logSNR")])
def test_dpm_solver_matches_edm_dpmsolver_multistep(sigma_schedule, skip_type):
  """EDM form (alpha = 1) with EDM's preconditioning on both sides (Karras et al.
  Table 1, sigma_data 0.5: train/score_losses.edm_denoiser), sigma in [0.002, 80].
  diffusers starts from z sqrt(sigma_max^2 + 1) (its init_noise_sigma), EDM's Algorithm
  1 from z sigma_max: both get the same x_T here."""
  num_steps = 12
  scheduler = diffusers.EDMDPMSolverMultistepScheduler(
      sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, sigma_schedule=sigma_schedule,
      algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
  x_init = (np.random.default_rng(8).standard_normal(SHAPE)
            * scheduler.init_noise_sigma).astype(np.float32)
  theirs = _diffusers_dpm(scheduler, x_init, num_steps, net=edm_raw,
                          network_input=lambda s, i, t: t.expand(SHAPE[0]))
  ours = sde_samplers.dpm_solver_pp_edm_sample(
      edm_denoiser(edm_raw), jax.random.key(0), SHAPE, num_steps=num_steps,
      sigma_min=0.002, sigma_max=80.0, skip_type=skip_type, x_init=x_init).images
  assert_parity(ours, theirs, f"edm dpm-solver++(2M) {sigma_schedule}")


# ------------------------------------------------------------------------ EDM Heun
@pytest.mark.parametrize("num_steps", [5, 18])
def test_edm_heun_matches_heun_discrete_with_karras_sigmas(num_steps):
  """Karras et al. Algorithm 1 (s_churn = 0, HeunDiscreteScheduler has no churn): Heun
  steps between the Karras sigmas (eq. 5, rho 7) of the DDPM schedule's range and an
  Euler step into sigma = 0, 2N - 1 network calls on both sides."""
  scheduler = diffusers.HeunDiscreteScheduler(
      num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
      use_karras_sigmas=True)
  sigma_min, sigma_max = _vp_sigma_range(scheduler)
  x_init = (np.random.default_rng(9).standard_normal(SHAPE) * sigma_max).astype(
      np.float32)
  calls = []

  def net(x_in, sigma):
    calls.append(float(sigma[0]))
    return vp_eps(x_in, sigma)

  theirs = _diffusers_dpm(scheduler, x_init, num_steps, net=net,
                          network_input=_sigma_of_step)
  ours = sde_samplers.edm_sample(
      vp_denoiser, jax.random.key(0), SHAPE, num_steps=num_steps, sigma_min=sigma_min,
      sigma_max=sigma_max, rho=7.0, x_init=x_init)
  assert len(calls) == ours.nfe == 2 * num_steps - 1
  np.testing.assert_allclose(
      np.unique(scheduler.sigmas.numpy())[::-1],
      sde_samplers.edm_sigma_schedule(num_steps, sigma_min, sigma_max), rtol=1e-6)
  assert_parity(ours.images, theirs, f"edm heun N={num_steps}")


# ------------------------------------------------------------ VE predictor-corrector
@pytest.mark.parametrize("snr,correct_steps", [(0.16, 1), (0.16, 2), (0.075, 1)])
def test_pc_sampler_matches_score_sde_ve_scheduler(correct_steps, snr):
  """Song et al. 2021 Algorithm 2 (VE): per level, correct_steps Langevin steps with
  step 2 (snr ||z|| / ||score||)^2 (norms averaged over the batch), then the
  reverse-diffusion predictor x + (sigma_i^2 - sigma_(i-1)^2) score + ... z; the mean
  of the last predictor is the sample (noise removal). ScoreSdeVePipeline's loop,
  before its clamp to [0, 1]."""
  num_steps, sigma_min, sigma_max, sampling_eps = 20, 0.01, 50.0, 1e-5
  scheduler = diffusers.ScoreSdeVeScheduler(
      num_train_timesteps=num_steps, snr=snr, sigma_min=sigma_min, sigma_max=sigma_max,
      sampling_eps=sampling_eps, correct_steps=correct_steps)
  scheduler.set_timesteps(num_steps)
  scheduler.set_sigmas(num_steps)
  # score_sde's discrete index of t: level N - 1 - i at step i, as the project's.
  np.testing.assert_array_equal(
      (scheduler.timesteps * (num_steps - 1)).long().numpy(),
      np.arange(num_steps)[::-1])
  seed = 10
  generator = torch.Generator().manual_seed(seed)
  x = torch.randn((SHAPE[0], SHAPE[3], SHAPE[1], SHAPE[2]),
                  generator=generator) * scheduler.init_noise_sigma
  with torch.no_grad():
    for i, t in enumerate(scheduler.timesteps):
      sigma = scheduler.sigmas[i] * torch.ones(SHAPE[0])
      for _ in range(correct_steps):
        x = scheduler.step_correct(ve_score(x, sigma), x,
                                   generator=generator).prev_sample
      out = scheduler.step_pred(ve_score(x, sigma), t, x, generator=generator)
      x, x_mean = out.prev_sample, out.prev_sample_mean
  theirs = to_numpy(x_mean)

  draws = _generator_draws(seed, 1 + num_steps * (correct_steps + 1))
  noise = np.stack(draws[1:]).reshape(num_steps, correct_steps + 1, *SHAPE)
  sde = VESDE(sigma_min=sigma_min, sigma_max=sigma_max, num_scales=num_steps)
  ours = sde_samplers.pc_sample(
      lambda x, t: ve_score(x, sde.sigma(t)), sde, jax.random.key(0), SHAPE,
      predictor="reverse_diffusion", corrector="langevin", snr=snr,
      n_steps=correct_steps, denoise=True, eps=sampling_eps,
      x_init=draws[0] * sigma_max, noise=noise).images
  # Values reach sigma_max = 50 at the start; the result is O(1).
  assert_parity(ours, theirs, f"pc ve snr={snr} correct_steps={correct_steps}")


# ------------------------------------------- a converted checkpoint vs the pipelines
NUM_IMAGES = 4
PIPELINE_STEPS = 10


@pytest.fixture(scope="module")
def converted_pipeline(tmp_path_factory):
  """A DDPMPipeline folder (random UNet2DModel of tests/test_convert.py's small
  published layout, DDPMScheduler fixed_large as google/ddpm-cifar10-32's) and its
  weights converted by convert/diffusers_unet.py."""
  from convert import diffusers_unet  # pylint: disable=g-import-not-at-top
  from tests import test_convert  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path_factory.mktemp("pipeline"))
  diffusers.DDPMPipeline(
      unet=test_convert.make_unet(**test_convert.SMALL),
      scheduler=diffusers.DDPMScheduler(variance_type="fixed_large", clip_sample=True)
  ).save_pretrained(folder)
  config = test_convert.project_config()
  _, abstract = test_convert.family_and_params(config)
  converted = diffusers_unet.convert(folder, config.model, config.diffusion,
                                     test_convert.IMAGE_SHAPE, abstract)
  return folder, converted.params


def _pipeline_uint8(images: np.ndarray) -> np.ndarray:
  """output_type='np' gives (x / 2 + 0.5).clamp(0, 1), NHWC; its PIL images are
  round(255 y) (diffusers.utils.numpy_to_pil). The project's uint8 is
  round((x + 1) 127.5) clipped to [0, 255] (datasets/transforms.centered_to_uint8):
  the same map, both rounding half to even."""
  return (images * 255).round().astype(np.uint8)


def _project_family(**sampling):
  from tests import test_convert  # pylint: disable=g-import-not-at-top
  from train import families  # pylint: disable=g-import-not-at-top
  config = test_convert.project_config()
  config.sampling.update(sampling)
  family, _ = families.build_family(config, test_convert.IMAGE_SHAPE, 10)
  return family, config


def _compare_uint8(ours, theirs, what: str) -> tuple[int, int]:
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8
  levels = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
  print(f"{what}: {int((levels > 0).sum())} of {levels.size} sub-pixels differ, by at "
        f"most {int(levels.max())} level(s)")
  return int(levels.max()), int((levels > 0).sum())


@pytest.mark.integration
def test_converted_ddpm_checkpoint_matches_ddpm_pipeline(converted_pipeline,
                                                         fast_compile):
  """DDPMPipeline(num_inference_steps=10) respaces with 'leading' timesteps 900, 800,
  ..., 0 and diffusers' respaced variance beta'_t = 1 - abar_t / abar_prev: the
  project's respacing into 10 sections of one step (config.sampling.respacing =
  "1,1,1,1,1,1,1,1,1,1", Nichol & Dhariwal sec. 4) with var_type fixedlarge.

  The U-Net outputs agree to ~1e-5 (tests/test_convert.py); through 10 steps that
  moves a few sub-pixels that lie within ~1e-3 of a rounding boundary by one level.
  """
  folder, params = converted_pipeline
  from datasets import transforms  # pylint: disable=g-import-not-at-top
  pipe = diffusers.DDPMPipeline.from_pretrained(folder)
  pipe.set_progress_bar_config(disable=True)
  seed = 11
  with torch.no_grad():
    theirs = pipe(batch_size=NUM_IMAGES, generator=torch.Generator().manual_seed(seed),
                  num_inference_steps=PIPELINE_STEPS, output_type="np").images
  family, config = _project_family(respacing=",".join(["1"] * PIPELINE_STEPS))
  np.testing.assert_array_equal(family.sampling_timesteps,
                                pipe.scheduler.timesteps.numpy()[::-1])
  shape = (NUM_IMAGES, *family.image_shape)
  draws = _generator_draws(seed, PIPELINE_STEPS, shape)   # x_T, then t = 900..100
  noise = np.stack(draws[1:] + [np.zeros(shape, np.float32)])
  # The call DDPM.sample_with_condition makes, with diffusers' draws.
  out = ddpm_sampling.ancestral_sample(
      family.edit_eps_fn(params, None), family.sampling_diffusion, jax.random.key(0),
      shape, var_type=config.diffusion.var_type,
      clip_denoised=config.sampling.clip_denoised,
      timestep_map=family.sampling_timesteps, x_init=draws[0], noise=noise)
  ours = transforms.centered_to_uint8(out.images)
  max_levels, count = _compare_uint8(ours, _pipeline_uint8(theirs),
                                     "DDPM 10 steps vs DDPMPipeline")
  assert max_levels <= 1 and count <= 0.01 * ours.size


@pytest.mark.integration
def test_converted_ddpm_checkpoint_matches_ddim_pipeline(converted_pipeline,
                                                         fast_compile):
  """DDIMPipeline(num_inference_steps=10, eta=0) visits 900, ..., 0 ('leading' = the
  project's ddim_spacing 'uniform'); with use_clipped_model_output=True it recomputes
  eps from the clipped x0 as the project does. Its default (False) keeps the network's
  eps beside the clipped x0: reported, not matched (test_ddim_conventions_...)."""
  folder, params = converted_pipeline
  from datasets import transforms  # pylint: disable=g-import-not-at-top
  ddpm = diffusers.DDPMPipeline.from_pretrained(folder)
  pipe = diffusers.DDIMPipeline(unet=ddpm.unet, scheduler=ddpm.scheduler)
  pipe.set_progress_bar_config(disable=True)
  seed = 12
  runs = {}
  with torch.no_grad():
    for clipped_eps in (True, None):
      runs[clipped_eps] = pipe(
          batch_size=NUM_IMAGES, generator=torch.Generator().manual_seed(seed), eta=0.0,
          num_inference_steps=PIPELINE_STEPS, use_clipped_model_output=clipped_eps,
          output_type="np").images
  family, config = _project_family(method="ddim", ddim_steps=PIPELINE_STEPS,
                                   ddim_eta=0.0, ddim_spacing="uniform")
  shape = (NUM_IMAGES, *family.image_shape)
  (x_init,) = _generator_draws(seed, 1, shape)
  s = config.sampling
  out = ddpm_sampling.ddim_sample(
      family.edit_eps_fn(params, None), family.sampling_diffusion, jax.random.key(0),
      shape, num_steps=s.ddim_steps, eta=s.ddim_eta, step_spacing=s.ddim_spacing,
      clip_denoised=s.clip_denoised, x_init=x_init)
  ours = transforms.centered_to_uint8(out.images)
  max_levels, count = _compare_uint8(ours, _pipeline_uint8(runs[True]),
                                     "DDIM 10 steps vs DDIMPipeline (clipped eps)")
  _compare_uint8(ours, _pipeline_uint8(runs[None]),
                 "DDIM 10 steps vs DDIMPipeline (default: unclipped eps)")
  assert max_levels <= 1 and count <= 0.01 * ours.size
