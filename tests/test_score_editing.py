"""Editing with score-family models: every SDE read as a discrete DDPM process.

Any Gaussian perturbation x = m x0 + s z is a VP diffusion after rescaling by
r = sqrt(m^2 + s^2), with abar = m^2 / r^2 and noise prediction -s score(x, t)
(train/score.py). The checks plug the exact score of Gaussian data into that mapping
and compare with the exact DDPM posterior mean of the noise, computed from abar with
the SDEs' coefficients written out here; then a tiny model edits end to end.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import score_base, score_digits
from models import diffusion as diffusion_lib
from train import edit_mode as edit_lib
from train import modes
from train import loop
from train import score

MU, VAR = 0.3, 0.2        # edit-space data x0 ~ N(MU, VAR) per sub-pixel, x0 in [-1, 1]
N = 12                    # levels

# (sde.type, its fields): score_sde's / EDM's defaults.
SDES = {
    "vesde": dict(sigma_min=0.01, sigma_max=50.0, sample_eps=1e-5),
    "vpsde": dict(beta_min=0.1, beta_max=20.0, sample_eps=1e-3),
    "subvpsde": dict(beta_min=0.1, beta_max=20.0, sample_eps=1e-3),
    "edm": dict(sigma_min=0.002, sigma_max=80.0, sample_eps=1e-5),
}


def _coefficients(sde_type, fields, t, xp=np):
  """(alpha(t), sigma(t)) of each SDE's perturbation kernel, written out (Song et al.
  2021 eqs. 29, 33, 34; EDM as the VE SDE between its sigma_min and sigma_max)."""
  if sde_type in ("vesde", "edm"):
    lo, hi = fields["sigma_min"], fields["sigma_max"]
    return xp.ones_like(t), lo * (hi / lo) ** t
  b0, b1 = fields["beta_min"], fields["beta_max"]
  integral = b0 * t + 0.5 * (b1 - b0) * t**2
  alpha = xp.exp(-0.5 * integral)
  if sde_type == "vpsde":
    return alpha, xp.sqrt(1.0 - xp.exp(-integral))
  return alpha, 1.0 - xp.exp(-integral)


def _config(sde_type, centered, num_levels=N, conditional=False):
  config = score_base.get_config()
  s = config.sde
  s.type, s.data_centered, s.num_scales = sde_type, centered, num_levels
  s.update(SDES[sde_type])
  config.model.name = "ddpm_unet"
  config.model.conditional = conditional
  return config


def _expected_alphas_cumprod(sde_type, centered, num_levels=N):
  fields = SDES[sde_type]
  times = np.linspace(fields["sample_eps"], 1.0, num_levels)
  m, s = _coefficients(sde_type, fields, times)
  s_edit = s if centered else 2.0 * s      # x0 in [0, 1] is (x0_edit + 1) / 2
  return m**2 / (m**2 + s_edit**2)


def _model_space(centered):
  """(mean, variance) of the model's data: [-1, 1] as is, or mapped to [0, 1]."""
  return (MU, VAR) if centered else ((MU + 1.0) / 2.0, VAR / 4.0)


def _exact_score(sde_type, centered, mean=None):
  """score(x, t) of the SDE's marginal for N(mu_m, v_m) data in the model's space."""
  mu_m, v_m = _model_space(centered)
  mu_m = mu_m if mean is None else mean

  def score_fn(x, t):
    m, s = _coefficients(sde_type, SDES[sde_type], t.reshape(-1, 1, 1, 1), jnp)
    return -(x - m * mu_m) / (m**2 * v_m + s**2)
  return score_fn


def _exact_eps(x_vp, abar, mu=MU):
  """E[eps | x_vp] for x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps, x0 ~ N(mu, VAR)."""
  return np.sqrt(1.0 - abar) * (x_vp - np.sqrt(abar) * mu) / (abar * VAR + 1.0 - abar)


def _draws(abar, seed=0):
  """x_vp at every level (one example per level), from the process's own marginal."""
  rng = np.random.default_rng(seed)
  a = abar.reshape(-1, 1, 1, 1)
  x0 = MU + np.sqrt(VAR) * rng.standard_normal((len(abar), 3, 3, 2))
  return np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("sde_type", list(SDES))
def test_exact_score_gives_the_exact_ddpm_noise_prediction(sde_type, centered):
  family = score.ScoreSDE(_config(sde_type, centered), (3, 3, 2), 0)
  family.score_fn = lambda params, y=None, **kw: _exact_score(sde_type, centered)
  eps_fn = family.edit_eps_fn(None)
  abar = _expected_alphas_cumprod(sde_type, centered)
  x_vp = _draws(abar)
  eps = np.asarray(eps_fn(jnp.asarray(x_vp, jnp.float32), jnp.arange(N)))
  np.testing.assert_allclose(eps, _exact_eps(x_vp, abar.reshape(-1, 1, 1, 1)),
                             rtol=2e-4, atol=2e-5)
  # The pure function on its own, one level for the whole batch (a scalar index).
  pure = score.eps_fn_from_score(_exact_score(sde_type, centered), family.sde,
                                 family.edit_times, centered)
  x = jnp.asarray(x_vp, jnp.float32)
  np.testing.assert_allclose(pure(x, 5), _exact_eps(x_vp, abar[5]), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("sde_type", list(SDES))
def test_levels_are_the_sde_read_as_a_ddpm_process(sde_type, centered):
  family = score.ScoreSDE(_config(sde_type, centered), (3, 3, 2), 0)
  fields = SDES[sde_type]
  np.testing.assert_allclose(family.edit_times,
                             np.linspace(fields["sample_eps"], 1.0, N), rtol=1e-12)
  abar = _expected_alphas_cumprod(sde_type, centered)
  assert np.all(np.diff(abar) < 0)
  np.testing.assert_allclose(score.edit_alphas_cumprod(family.sde, family.edit_times,
                                                       centered), abar, rtol=1e-10)
  process = family.edit_process
  diffusion = process.diffusion
  assert diffusion.num_timesteps == N
  assert process.sampling_diffusion is diffusion and process.sampling_timesteps is None
  assert process.var_type == "fixedsmall"
  np.testing.assert_allclose(np.asarray(diffusion.alphas_cumprod), abar, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(diffusion.sqrt_one_minus_alphas_cumprod),
                             np.sqrt(1.0 - abar), rtol=2e-6)
  betas = np.asarray(diffusion.betas)
  assert np.all((betas > 0) & (betas <= 1))
  np.testing.assert_allclose(np.cumprod(1.0 - betas.astype(np.float64)), abar, rtol=2e-6)


@pytest.mark.parametrize("sde_type, num_levels", [("vesde", 8), ("vpsde", 30),
                                                   ("vesde", 1000), ("vpsde", 1000)])
def test_levels_are_the_discrete_models_labels(sde_type, num_levels):
  """A discrete SMLD / DDPM model reads its label from t: level i must be label i."""
  config = _config(sde_type, True, num_levels)
  config.sde.continuous = False
  family = score.ScoreSDE(config, (3, 3, 2), 0)
  labels = family.sde.discrete_index(jnp.asarray(family.edit_times, jnp.float32))
  np.testing.assert_array_equal(labels, np.arange(num_levels))


def test_levels_without_noise_growth_are_refused():
  config = _config("vpsde", True)
  config.sde.sample_eps = 0.0      # VP at t = 0 has no noise: abar_0 = 1, beta_0 = 0
  family = score.ScoreSDE(config, (3, 3, 2), 0)
  with pytest.raises(ValueError, match=r"outside \(0, 1\].*sample_eps"):
    family.edit_process  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match=r"beta_2 = .* outside \(0, 1\]"):
    diffusion_lib.betas_from_alphas_cumprod(np.array([0.9, 0.5, 0.5, 0.1]))


def test_guidance_and_conditions():
  """Guided eps is eq. 6 of the two exact noise predictions; conditions are checked."""
  config = _config("vesde", False, conditional=True)
  config.guidance.weight, config.guidance.p_uncond = 2.0, 0.1
  family = score.ScoreSDE(config, (3, 3, 2), 3)
  mu_of = lambda y: 0.1 * y.astype(jnp.float32).reshape(-1, 1, 1, 1) - 0.2  # noqa: E731

  def score_fn(params, y=None, **kw):
    def fn(x, t):
      return _exact_score("vesde", False, mean=(mu_of(y) + 1.0) / 2.0)(x, t)
    return fn
  family.score_fn = score_fn
  abar = _expected_alphas_cumprod("vesde", False)
  x_vp = _draws(abar, seed=1)
  y = jnp.asarray([0, 1, 2, 1] * 3, jnp.int32)
  eps = np.asarray(family.edit_eps_fn(None, y)(jnp.asarray(x_vp, jnp.float32),
                                               jnp.arange(N)))
  a = abar.reshape(-1, 1, 1, 1)
  cond = _exact_eps(x_vp, a, np.asarray(mu_of(y)))
  uncond = _exact_eps(x_vp, a, 0.1 * 3 - 0.2)       # the null label is num_classes
  np.testing.assert_allclose(eps, 3.0 * cond - 2.0 * uncond, rtol=5e-4, atol=5e-5)
  plain = family.edit_eps_fn(None, y, guidance_weight=0.0)(jnp.asarray(x_vp, jnp.float32),
                                                          jnp.arange(N))
  np.testing.assert_allclose(plain, cond, rtol=2e-4, atol=2e-5)
  c = family.conditioning
  assert (c.kind, c.guidance_weight, c.p_uncond, c.null_value) == ("class", 2.0, 0.1, 3)
  with pytest.raises(ValueError, match="conditional: pass labels"):
    family.edit_eps_fn(None)
  unconditional = score.ScoreSDE(_config("vesde", True), (3, 3, 2), 3)
  with pytest.raises(ValueError, match="unconditional"):
    unconditional.edit_eps_fn(None, y)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def ve_workdir(tmp_path_factory):
  """A 1-step VE model (data in [0, 1], as NCSN++'s) on digits, trained through the loop.

  Ho et al.'s U-Net instead of NCSN++: the same score parameterisation, less
  compile time.
  """
  config = score_digits.get_config("ve,runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  m = config.model
  m.name, m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_groups = (
      "ddpm_unet", 8, (1, 2), 1, (), 4)
  config.sde.num_scales = 8
  config.optim.warmup_steps = 0
  t = config.training
  t.batch_size, t.num_train_steps = 4, 1
  t.log_every_steps = t.checkpoint_every_steps = 1
  t.sample_every_steps = 0
  t.async_checkpointing = False
  config.eval.sample_metrics = "none"
  workdir = str(tmp_path_factory.mktemp("score_ve"))
  jax.config.update("jax_disable_most_optimizations", True)
  original = modes.evaluate
  modes.evaluate = lambda *args, **kwargs: None    # no bits/dim: editing is the point
  try:
    loop.train_and_evaluate(config, workdir)
  finally:
    modes.evaluate = original
    jax.config.update("jax_disable_most_optimizations", False)
  return config, workdir


@pytest.mark.integration
def test_score_model_inpaints_and_sdedits(ve_workdir, tmp_path, fast_compile):
  config, workdir = ve_workdir
  digits = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
  np.savez(tmp_path / "digits.npz", arr_0=digits)
  out = edit_lib.edit(config, workdir, dict(edit="inpaint", input=str(tmp_path / "digits.npz"),
                                            mask="left"))
  images = np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"]
  assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[:, :, 4:], digits[:, :, 4:])   # kept pixels exact
  settings = json.load(open(os.path.join(out["directory"], "settings.json")))
  assert settings["edit"] == "inpaint" and settings["nfe"] == 8
  assert settings["var_type"] == "fixedsmall"
  out = edit_lib.edit(config, workdir, dict(edit="sdedit", input=str(tmp_path / "digits.npz"),
                                            strength=0.5))
  images = np.load(os.path.join(out["directory"], "samples.npz"))["arr_0"]
  assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8
  assert out["settings"]["nfe"] == 4 and out["settings"]["strength"] == 0.5
  with pytest.raises(ValueError, match="SR3"):
    edit_lib.edit(config, workdir, dict(edit="superres", input=str(tmp_path / "digits.npz")))
