"""The score-based family: its parameterisations, samplers and configs.

The key check plugs an ideal "network" in place of NCSN++: for data x0 ~ N(mu, s^2)
per sub-pixel, the true score, noise prediction and denoiser of every SDE are known in
closed form. A stub that outputs them in each type's raw parameterisation (VE: sigma
times the score, from log sigma; VP / sub-VP: the noise, from 999 t; EDM: F such that
c_skip x + c_out F = E[x0 | x], from c_noise = ln(sigma) / 4) must make every sampler
of the family produce samples with the data's mean and variance; that pins down the
label conventions and output scalings end to end.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpmpp_cifar, edm_cifar, ncsnpp_cifar, score_digits
from models import ncsnpp
from train import families, score

MU, STD = 0.5, 0.15     # data distribution in the model's scale (inside [0, 1])


class _IdealNetwork(nn.Module):
  """The raw output a perfect network would give for N(MU, STD^2) data."""
  sde_type: str
  sde: object
  sigma_data: float = 0.5

  @nn.compact
  def __call__(self, x, noise_labels, y=None, *, train):
    self.param("unused", nn.initializers.zeros, (1,))
    lab = noise_labels.reshape((-1,) + (1,) * (x.ndim - 1))
    if self.sde_type == "vesde":            # label = log sigma, raw = sigma * score
      sigma = jnp.exp(lab)
      return -sigma * (x - MU) / (STD**2 + sigma**2)
    if self.sde_type == "edm":              # label = ln(sigma) / 4, input c_in x
      sigma = jnp.exp(4.0 * lab)
      total = sigma**2 + self.sigma_data**2
      x_noisy = x * jnp.sqrt(total)
      denoised = MU + STD**2 / (STD**2 + sigma**2) * (x_noisy - MU)
      c_skip = self.sigma_data**2 / total
      c_out = sigma * self.sigma_data / jnp.sqrt(total)
      return (denoised - c_skip * x_noisy) / c_out
    t = lab / 999.0                         # VP / sub-VP: label = 999 t, raw = noise
    alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
    score_value = -(x - alpha * MU) / (alpha**2 * STD**2 + sigma**2)
    return -sigma * score_value


def _family(kind, method, **sampling):
  config = score_digits.get_config(f"{kind},runlocal")
  config.sde.num_scales = 300
  config.sampling.method = method
  config.sampling.num_steps = 30
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-4
  config.sampling.update(sampling)
  family = score.ScoreSDE(config, (8, 8, 1), 10)
  family.network = _IdealNetwork(family.config.sde.type, family.sde,
                                 family.config.sde.sigma_data)
  return family


CASES = [("ve", "pc"), ("vp", "pc"), ("subvp", "pc"), ("edm", "edm_heun"),
         ("vp", "ode"), ("ve", "edm_heun"), ("vp", "dpm_solver"), ("edm", "dpm_solver"),
         ("edm", "pc")]


# ("vp", "ode"): the ODE sampler on this data is in tests/test_sde_samplers.py's default
# tier; here it runs in the integration tier.
@pytest.mark.parametrize("kind, method", [
    pytest.param(*c, marks=pytest.mark.integration) if c == ("vp", "ode") else c
    for c in CASES])
def test_ideal_network_samples_the_data_distribution(kind, method):
  family = _family(kind, method, predictor="reverse_diffusion" if kind == "ve" else
                   "euler_maruyama", corrector="langevin" if kind == "ve" else "none")
  params = {"unused": jnp.zeros((1,))}
  images, nfe = jax.jit(family.sample_with_nfe, static_argnums=2)(
      params, jax.random.PRNGKey(0), 64)
  x = np.asarray(images, np.float64) / 255.0
  if family.config.sde.data_centered:
    x = 2.0 * x - 1.0
  # 4096 values: the mean's standard error is 0.15 / 64 ~ 0.0025 (plus 1/255 rounding).
  assert abs(x.mean() - MU) < 0.015, (x.mean(), x.std())
  assert abs(x.std() - STD) < 0.015, (x.mean(), x.std())
  expected = family.sampler_settings()["nfe"]
  if isinstance(expected, int):
    assert int(nfe) == expected
  else:
    assert 0 < int(nfe) < 4096


@pytest.mark.parametrize("kind, refused", [("ve", True), ("vp", True), ("edm", False)])
def test_edm_heun_churn_stays_in_the_score_networks_range(kind, refused):
  """An SDE's score network knows sigma up to the SDE's sigma_max, so churn there is
  refused; EDM's preconditioned network takes any sigma."""
  family = _family(kind, "edm_heun", s_churn=10.0)
  params = {"unused": jnp.zeros((1,))}
  if refused:
    with pytest.raises(ValueError, match="above its range"):
      family.sample_with_nfe(params, jax.random.PRNGKey(0), 2)
    family.config.sampling.s_max = family.config.sde.sigma_max / 2 if kind == "ve" else 1.0
  images, _ = family.sample_with_nfe(params, jax.random.PRNGKey(0), 2)
  assert images.shape == (2, 8, 8, 1)


@pytest.mark.slow   # the discrete losses' values are checked in tests/test_score_losses.py
def test_smld_and_ddpm_discrete_losses_train(fast_compile):
  for kind in ("ve", "vp"):
    config = score_digits.get_config(f"{kind},runlocal")
    config.sde.continuous = False
    config.sde.num_scales = 100         # the DDPM chain needs beta_max / N < 1
    family = score.ScoreSDE(config, (8, 8, 1), 10)
    batch = dict(image=np.full((4, 8, 8, 1), 128, np.uint8), label=np.zeros(4, np.int32))
    state = family.init(jax.random.PRNGKey(0), batch)
    _, metrics = jax.jit(family.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("module, arg, count_key", [
    (ncsnpp_cifar, "", "ve_ncsnpp_continuous"),
    (ncsnpp_cifar, "deep", "ve_ncsnpp_deep_continuous"),
    (ddpmpp_cifar, "vp", "vp_ddpmpp_continuous"),
    (ddpmpp_cifar, "vp,deep", "vp_ddpmpp_deep_continuous"),
    (ddpmpp_cifar, "subvp,deep", "vp_ddpmpp_deep_continuous"),
    (edm_cifar, "", "edm_ddpmpp"),
    (edm_cifar, "ncsnpp", "edm_ncsnpp"),
])
def test_paper_configs_build_the_papers_networks(module, arg, count_key):
  config = module.get_config(arg)
  family = score.ScoreSDE(config, (32, 32, 3), 10)
  batch = dict(image=np.zeros((1, 32, 32, 3), np.uint8), label=np.zeros(1, np.int32))
  state = jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  assert count == ncsnpp.PARAM_COUNTS_CIFAR10[count_key]


def test_paper_hyperparameters():
  ve = ncsnpp_cifar.get_config("deep")
  assert (ve.sde.type, ve.sde.sigma_min, ve.sde.sigma_max, ve.sde.data_centered) == \
      ("vesde", 0.01, 50.0, False)
  assert (ve.sampling.predictor, ve.sampling.corrector, ve.sampling.snr) == \
      ("reverse_diffusion", "langevin", 0.16)
  assert (ve.optim.ema_decay, ve.training.num_train_steps) == (0.999, 950_000)
  vp = ddpmpp_cifar.get_config("subvp,deep")
  assert (vp.sde.type, vp.sde.reduce_mean, vp.optim.ema_decay, vp.sde.sample_eps) == \
      ("subvpsde", True, 0.9999, 1e-3)
  edm = edm_cifar.get_config("cond")
  assert edm.model.conditional and edm.training.batch_size == 512
  assert edm.training.num_train_steps * 512 == 200_000_000
  assert edm.sampling.num_steps == 18 and edm.sampling.method == "edm_heun"
  assert score.ScoreSDE(edm, (32, 32, 3), 10).sampler_settings()["nfe"] == 35


@pytest.mark.parametrize("field, value, match", [
    ("sde.type", "cld", "sde.type"),
    ("sampling.method", "euler", "sampling.method"),
    ("model.name", "unet3d", "model.name"),
])
def test_bad_config_values_are_named(field, value, match):
  config = score_digits.get_config("vp,runlocal")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    families.get_family(config, (8, 8, 1), 10)


def test_subvp_continuous_false_is_refused():
  config = score_digits.get_config("subvp,runlocal")
  config.sde.continuous = False
  with pytest.raises(ValueError, match="continuous=False"):
    score.ScoreSDE(config, (8, 8, 1), 10)


@pytest.mark.integration
def test_train_eval_sample_through_the_loop(tmp_path, fast_compile):
  """One SDE end to end: train, checkpoint, bits/dim by the ODE, samples + their NFE."""
  import json
  from train import loop
  config = score_digits.get_config("edm,runlocal")
  config.sampling.method = "ode"       # adaptive: its NFE is measured, not computed
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-2
  config.training.num_train_steps = 10
  config.training.sample_every_steps = 10
  loop.train_and_evaluate(config, str(tmp_path))
  report = json.loads((tmp_path / "eval" / "step_00000010.json").read_text())
  assert np.isfinite(report["bpd_ode"]) and report["likelihood_nfe"] > 0
  from sampling import image_io
  provenance = image_io.read_png_provenance(
      str(tmp_path / "samples" / "train_step_00000010.png"))
  assert provenance["sampler"] == "ode" and provenance["nfe_measured"] > 0


@pytest.mark.parametrize("module, arg", [
    pytest.param(ncsnpp_cifar, "deep,runlocal", marks=pytest.mark.slow),
    pytest.param(ddpmpp_cifar, "subvp,deep,runlocal", marks=pytest.mark.slow),
    pytest.param(edm_cifar, "cond,runlocal", marks=pytest.mark.integration),
    pytest.param(edm_cifar, "ncsnpp,runlocal", marks=pytest.mark.slow)])
def test_paper_configs_train_and_sample_a_step_on_tiny_shapes(module, arg, fast_compile):
  """Each paper config's own structure, shrunk by its runlocal switch (16x16 shapes)."""
  config = module.get_config(arg)
  config.sde.num_scales, config.sampling.num_steps = 2, 2
  family = score.ScoreSDE(config, (16, 16, 3), 4)
  batch = dict(image=np.full((2, 16, 16, 3), 100, np.uint8), label=np.arange(2) % 4)
  state = family.init(jax.random.PRNGKey(0), batch)
  state, metrics = jax.jit(family.train_step)(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  images, nfe = family.sample_with_nfe(state.ema_params, jax.random.PRNGKey(1), 2)
  assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
  assert nfe == family.sampler_settings()["nfe"]
