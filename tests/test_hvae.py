"""The hierarchical VAE family (VDVAE): KLs, update skipping and clipping, block specs,
the ELBO against a brute-force marginal likelihood, sampling, training and the loop."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, special, stats

import datasets
from configs import hvae_digits, vdvae_cifar
from evaluation import iwae as iwae_lib
from models import hvae as hvae_models
from models import logistic_mixture
from train import families, loop
from train import hvae as hvae_lib
from train import optim as optim_lib

KEYS = ("image", "label")


def tiny_config(**hvae):
  """Digits at 8x8 with a 3-layer top-down decoder at resolutions 1, 4, 8."""
  config = hvae_digits.get_config("runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.training.async_checkpointing = False
  config.optim.warmup_steps = 0       # a full-size first update
  for k, v in hvae.items():
    config.hvae[k] = v
  return config


def family_for(config, image_shape=(8, 8, 1)):
  return hvae_lib.HierarchicalVAE(config, image_shape, 10)


def digits_batch(n=8, offset=0):
  rng = np.random.default_rng(offset)
  images = rng.integers(0, 256, size=(n, 8, 8, 1)).astype(np.uint8)
  return dict(image=images, label=np.zeros((n,), np.int32))


def perturbed(params, scale, seed=0):
  """Params plus Gaussian noise: priors, posteriors and decoder all depend on inputs."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


# ------------------------------------------------------------------ Gaussian KL
@pytest.mark.parametrize("q_mean,q_std,p_mean,p_std", [
    (0.3, 0.5, -0.2, 1.4), (2.0, 1.0, 0.0, 1.0), (-1.0, 2.0, 0.5, 0.3)])
def test_layer_kls_of_log_std_statistics_match_quadrature(q_mean, q_std, p_mean, p_std):
  """The layers report log-stds; their KL is that of the standard deviations given."""
  stat = lambda v: jnp.full((1, 2, 2, 1), v, jnp.float32)  # noqa: E731  [B, h, w, zdim]
  stats_ = [dict(q_mean=stat(q_mean), q_log_std=stat(math.log(q_std)), p_mean=stat(p_mean),
                 p_log_std=stat(math.log(p_std)))]
  got = np.asarray(hvae_lib.layer_kls(stats_))
  q, p = stats.norm(q_mean, q_std), stats.norm(p_mean, p_std)
  # Numerical integral of q log(q / p) with scipy (independent of the closed form).
  quad, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)),
                           q_mean - 20 * q_std, q_mean + 20 * q_std)
  assert got.shape == (1, 1)
  np.testing.assert_allclose(got[0, 0], 4 * quad, rtol=1e-5, atol=1e-6)   # 4 positions


def test_kl_term_is_exactly_zero_when_every_posterior_equals_the_prior(fast_compile):
  """At init every prior is N(0, I) (zero last conv); zeroing the posteriors' last
  convs makes every q N(0, I) too, whatever the input."""
  family = family_for(tiny_config())
  batch = digits_batch()
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p) if ("posterior" in str(path) and "c4" in str(path))
      else p, params)
  terms = jax.jit(family.negative_elbo_terms)
  recon, kls = terms(params, batch["image"], jax.random.PRNGKey(1))
  assert kls.shape == (3, 8)            # 3 latent layers, 8 examples
  assert np.all(np.asarray(kls) == 0.0)
  assert np.all(np.isfinite(np.asarray(recon)))
  # A perturbed model has positive KLs in every layer.
  _, kls = terms(perturbed(params, 0.05), batch["image"], jax.random.PRNGKey(1))
  assert np.all(np.asarray(kls) > 0.0)


# ------------------------------------------------------------------ block specs
def test_block_spec_parser_on_good_strings():
  parse = hvae_models.parse_block_spec
  B = hvae_models.BlockSpec
  assert parse("8x2,8d2,4") == (B(8), B(8), B(8, "down", 2), B(4))
  assert parse("1x1, 4m1,4x2") == (B(1), B(4, "mix", 1), B(4), B(4))
  enc = parse(vdvae_cifar.get_config().hvae.enc_blocks)
  dec = parse(vdvae_cifar.get_config().hvae.dec_blocks)
  assert (len(enc), len(dec)) == (33, 43)
  assert hvae_models.encoder_resolutions(enc, 32) == (32, 16, 8, 4, 1)
  hvae_models.check_decoder_spec(dec, 32, (32, 16, 8, 4, 1))


def test_cap_repeats_keeps_the_structure():
  spec = vdvae_cifar.get_config().hvae.enc_blocks
  assert hvae_models.cap_repeats(spec, 1) == "32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1"
  assert hvae_models.cap_repeats("1x1,4m1,4x2", 5) == "1x1,4m1,4x2"
  with pytest.raises(ValueError, match="Bad token"):
    hvae_models.cap_repeats("4q", 1)


@pytest.mark.parametrize("spec,message", [
    ("", "non-empty"), ("8x", "Bad token"), ("8y2", "Bad token"), ("x2", "Bad token"),
    ("8x0", ">= 1"), ("0x2", ">= 1"), ("8d3", "divide"), ("8d1", ">= 2"),
    ("4m4", "smaller"), ("6m4", "divide"), ("8,,4", "Bad token")])
def test_block_spec_parser_refuses_bad_strings(spec, message):
  with pytest.raises(ValueError, match=message):
    hvae_models.parse_block_spec(spec)


@pytest.mark.parametrize("field,value,message", [
    ("enc_blocks", "4x2,4d2,2", "must start at the image size"),
    ("enc_blocks", "8x1,4x1", "change resolution only through 'd'"),
    ("enc_blocks", "8x1,8m4", "cannot mix in"),
    ("dec_blocks", "1x1,4m1", "must be at the image size 8"),
    ("dec_blocks", "1x1,2m1,8m2", "has no encoder activation"),
    ("dec_blocks", "8m4", "before any block has run"),
    ("dec_blocks", "1x1,8d8", "cannot pool"),
    ("zdim", 0, "must be >= 1"), ("grad_clip", 0.0, "grad_clip must be > 0")])
def test_bad_configs_are_refused_before_compiling(field, value, message):
  with pytest.raises(ValueError, match=message):
    family_for(tiny_config(**{field: value}))


def test_other_bad_configs_are_refused():
  config = tiny_config()
  config.optim.grad_clip_norm = 1.0
  with pytest.raises(ValueError, match="grad_clip_norm"):
    family_for(config)
  config = tiny_config()
  config.sampling.temperature = 0.0
  with pytest.raises(ValueError, match="temperature"):
    family_for(config)
  with pytest.raises(ValueError, match="square"):
    family_for(tiny_config(), image_shape=(8, 4, 1))


def test_vdvae_cifar_config_has_the_papers_settings_and_size():
  c = vdvae_cifar.get_config()
  h = c.hvae
  assert (c.model.ch, h.zdim, h.bottleneck_multiple, h.num_mixtures) == (384, 16, 0.25, 10)
  assert (h.grad_clip, h.skip_threshold) == (200.0, 400.0)
  assert (c.optim.optimizer, c.optim.learning_rate, c.optim.weight_decay,
          c.optim.beta2, c.optim.warmup_steps, c.optim.ema_decay) == (
              "adamw", 2e-4, 0.01, 0.9, 100, 0.9999)
  assert c.training.batch_size == 32
  family = hvae_lib.HierarchicalVAE(c, (32, 32, 3), 10)
  shapes = jax.eval_shape(family.init, jax.random.PRNGKey(0),
                          dict(image=jnp.zeros((1, 32, 32, 3), jnp.uint8),
                               label=jnp.zeros((1,), jnp.int32)))
  count = hvae_models.count_params(shapes.params)
  assert count == 39_145_700                       # the docstring's figure
  assert abs(count - 39e6) / 39e6 < 0.01           # the reference README's "39M"


# -------------------------------------------------------- skipping and clipping
def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_gradient_skipping_leaves_the_state_bit_identical(fast_compile):
  batch = digits_batch()
  # Threshold below any gradient norm: the update is skipped whole.
  family = family_for(tiny_config(skip_threshold=1e-9))
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
  new, metrics = jax.jit(family.train_step)(state, batch)
  assert float(metrics["skipped"]) == 1.0 and float(metrics["grad_norm"]) > 1e-9
  assert int(new.step) == 1
  assert _tree_equal(new.params, state.params)
  assert _tree_equal(new.opt_state, state.opt_state)
  assert _tree_equal(new.ema_params, state.ema_params)


@pytest.mark.integration   # several train steps of the hierarchical VAE
def test_clipping_bounds_the_update_and_nan_updates_are_skipped(fast_compile):
  """With plain SGD at learning rate 1 the update is minus the clipped gradient."""
  batch = digits_batch()
  clip = 1e-3
  family = family_for(tiny_config(grad_clip=clip, skip_threshold=0.0))
  family.tx = optax.sgd(1.0)
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
  step = jax.jit(family.train_step)
  new, metrics = step(state, batch)
  assert float(metrics["skipped"]) == 0.0
  assert float(metrics["grad_norm"]) > 10 * clip      # clipping is active
  assert not _tree_equal(new.ema_params, state.ema_params)
  delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                       new.params, state.params)
  update_norm = math.sqrt(sum(float(np.sum(d ** 2)) for d in jax.tree.leaves(delta)))
  np.testing.assert_allclose(update_norm, clip, rtol=1e-3)
  # Direction: minus the raw gradient (recomputed with the step's rng).
  rng = jax.random.fold_in(state.rng, state.step)
  grads, _ = jax.jit(jax.grad(family.objective, has_aux=True))(state.params, batch, rng)
  g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
  d = np.concatenate([np.ravel(x) for x in jax.tree.leaves(delta)])
  cosine = -np.dot(g, d) / (np.linalg.norm(g) * np.linalg.norm(d))
  assert cosine > 0.999
  # A NaN in the weights (so a NaN loss and gradient) is skipped, never applied.
  params = dict(state.params)
  params["out_bias"] = params["out_bias"].at[0].set(jnp.nan)
  broken = state.replace(params=params)
  new, metrics = step(broken, batch)
  assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert _tree_equal(new.params, broken.params)
  assert _tree_equal(new.ema_params, broken.ema_params)


def test_clip_and_skip_functions():
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
  norm = optax.global_norm(grads)
  clipped = optim_lib.clip_by_global_norm(grads, norm, 1.0)
  np.testing.assert_allclose(np.sqrt(sum(np.sum(np.square(x))
                                         for x in jax.tree.leaves(clipped))), 1.0, rtol=1e-5)
  np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-5)
  kept = optim_lib.clip_by_global_norm(grads, norm, 10.0)
  np.testing.assert_allclose(kept["b"], [[4.0]])
  skip = optim_lib.should_skip
  assert not bool(skip(jnp.float32(1.0), jnp.float32(399.0), 400.0))
  assert bool(skip(jnp.float32(1.0), jnp.float32(400.0), 400.0))
  assert bool(skip(jnp.float32(jnp.nan), jnp.float32(1.0), 400.0))
  assert bool(skip(jnp.float32(1.0), jnp.float32(jnp.inf), 0.0))
  assert not bool(skip(jnp.float32(1.0), jnp.float32(1e9), 0.0))


# ------------------------------------------- the ELBO against brute-force log p(x)
def test_elbo_against_a_brute_force_marginal_likelihood(fast_compile):
  """One pixel, one latent layer with one dimension: log p(x) = log int p(z) p(x|z) dz
  by quadrature on a fine grid. Checks: p(x|z) and the marginal p(x) each sum to 1
  over the 256 levels; the family's ELBO, averaged over many posterior draws, matches
  the quadrature ELBO int q (log p(x|z) + log p(z) - log q); and ELBO <= log p(x)."""
  config = tiny_config(enc_blocks="1x1", dec_blocks="1x1", zdim=1, num_mixtures=2)
  config.model.ch = 8
  family = family_for(config, image_shape=(1, 1, 1))
  level = 100
  image = np.full((1, 1, 1, 1), level, np.uint8)
  params = perturbed(jax.jit(family.init)(jax.random.PRNGKey(0), dict(image=image)).params, 0.5)

  x_in, _ = family.prepare(image)
  _, layer = jax.jit(lambda p, x: family._apply(p, x, posterior_mean=True))(params, x_in)
  first = {k: float(np.ravel(v)[0]) for k, v in layer[0].items()}
  q_mean, q_std = first["q_mean"], math.exp(first["q_log_std"])
  p_mean, p_std = first["p_mean"], math.exp(first["p_log_std"])
  low = min(q_mean - 12 * q_std, p_mean - 12 * p_std)
  high = max(q_mean + 12 * q_std, p_mean + 12 * p_std)
  z = np.linspace(low, high, 4001)
  dz = z[1] - z[0]
  levels = np.arange(256)
  targets = jnp.asarray(levels / 127.5 - 1.0, jnp.float32).reshape(256, 1, 1, 1, 1)

  @jax.jit
  def grid_log_likelihoods(params, z):
    """log p(x = level | z) for every level and grid point: [G, 256]."""
    mixture, prior_stats = family._apply(params, [z.reshape(-1, 1, 1, 1)],
                                         method=family.network.decode_latents)
    per_level = jax.vmap(lambda t: logistic_mixture.log_prob(
        jnp.broadcast_to(t, (z.shape[0], 1, 1, 1)), mixture, num_mixtures=2))(targets)
    return per_level.T, prior_stats[0]["p_mean"]

  log_lik, prior_means = grid_log_likelihoods(params, jnp.asarray(z, jnp.float32))
  log_lik = np.asarray(log_lik, np.float64)
  # The first layer's prior depends on nothing: the same at every grid point.
  np.testing.assert_allclose(np.asarray(prior_means).ravel(), p_mean, rtol=1e-6)
  np.testing.assert_allclose(special.logsumexp(log_lik, axis=1), 0.0, atol=1e-4)
  log_prior = stats.norm(p_mean, p_std).logpdf(z)
  log_marginal = special.logsumexp(log_prior[:, None] + log_lik, axis=0) + math.log(dz)
  np.testing.assert_allclose(special.logsumexp(log_marginal), 0.0, atol=1e-4)

  q_pdf = stats.norm(q_mean, q_std).pdf(z)
  integrand = q_pdf * (log_lik[:, level] + log_prior - stats.norm(q_mean, q_std).logpdf(z))
  elbo_quadrature = float(np.sum(integrand) * dz)
  assert elbo_quadrature < log_marginal[level] - 1e-3       # a strict gap here

  n = 20_000
  recon, kls = jax.jit(family.negative_elbo_terms)(
      params, np.repeat(image, n, axis=0), jax.random.PRNGKey(7))
  elbo_samples = -np.asarray(recon + kls[0], np.float64)
  stderr = elbo_samples.std() / math.sqrt(n)
  assert abs(elbo_samples.mean() - elbo_quadrature) < 4 * stderr + 1e-4, (
      elbo_samples.mean(), elbo_quadrature, stderr)


def test_iwae_bound_against_a_two_layer_brute_force_marginal(fast_compile):
  """One pixel, two latent layers of one dimension (z_2's prior and posterior depend on
  z_1): log p(x) and the ELBO by quadrature on a 2-D grid, with every density taken
  from the network at the grid points. Checks: the family's k=1 bound averages to the
  quadrature ELBO; L_1 < L_10 < L_100 on average; L_2000 averages to within 0.01
  nats of log p(x); and the chunked bound does not depend on the chunk size."""
  config = tiny_config(enc_blocks="1x1", dec_blocks="1x2", zdim=1, num_mixtures=2)
  config.model.ch = 8
  family = family_for(config, image_shape=(1, 1, 1))
  level = 140
  image = np.full((1, 1, 1, 1), level, np.uint8)
  params = perturbed(jax.jit(family.init)(jax.random.PRNGKey(0), dict(image=image)).params,
                     0.3, seed=0)
  x_in, target = family.prepare(image)
  grid_1d = np.linspace(-8.0, 8.0, 801)
  dz = grid_1d[1] - grid_1d[0]
  z1, z2 = (a.reshape(-1) for a in np.meshgrid(grid_1d, grid_1d, indexing="ij"))

  @jax.jit
  def grid_terms(params, z1, z2):
    """Posterior pass with both latents fixed at each grid point: log-densities."""
    n = z1.shape[0]
    activations = family._apply(params, x_in, method=family.network.encode)
    tiled = {r: jnp.broadcast_to(a, (n, *a.shape[1:])) for r, a in activations.items()}
    latents = [z1.reshape(n, 1, 1, 1), z2.reshape(n, 1, 1, 1)]
    mixture, stats = family._apply(params, tiled, n, latents,
                                   method=family.network.decode)
    log_lik = logistic_mixture.log_prob(jnp.broadcast_to(target, (n, 1, 1, 1)), mixture,
                                        num_mixtures=2)
    def log_normal(z, mean, log_std):
      return jax.scipy.stats.norm.logpdf(z, mean.reshape(-1), jnp.exp(log_std.reshape(-1)))
    log_p = sum(log_normal(z, s["p_mean"], s["p_log_std"]) for z, s in zip((z1, z2), stats))
    log_q = sum(log_normal(z, s["q_mean"], s["q_log_std"]) for z, s in zip((z1, z2), stats))
    return log_lik, log_p, log_q

  log_lik, log_p, log_q = (np.asarray(a, np.float64) for a in grid_terms(
      params, jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)))
  # The grid holds the posterior: q integrates to 1 on it.
  np.testing.assert_allclose(np.exp(special.logsumexp(log_q)) * dz * dz, 1.0, atol=1e-4)
  log_marginal = special.logsumexp(log_p + log_lik) + 2 * math.log(dz)
  elbo = float(np.sum(np.exp(log_q) * (log_lik + log_p - log_q)) * dz * dz)
  assert elbo < log_marginal - 0.05, (elbo, log_marginal)   # a clear gap to close

  def bounds(k, copies, chunk, seed=0):
    return np.asarray(jax.jit(lambda p, key: iwae_lib.chunked_log_mean_weight(
        lambda r, n: family.log_importance_weights(p, np.repeat(image, copies, 0), r, n),
        key, num_samples=k, chunk_size=chunk)["iwae"])(params, jax.random.PRNGKey(seed)),
        np.float64)

  l1 = bounds(1, 8000, 1)
  assert abs(l1.mean() - elbo) < 4 * l1.std() / math.sqrt(l1.size) + 1e-4, (l1.mean(), elbo)
  means = [bounds(k, 200, min(k, 10), seed=k).mean() for k in (1, 10, 100)]
  assert means[0] < means[1] < means[2] < log_marginal + 1e-3, (means, log_marginal)
  l_large = bounds(2000, 32, 500)     # 32 independent L_2000 estimates
  assert abs(l_large.mean() - log_marginal) < 0.01, (l_large.mean(), log_marginal)
  # Chunking changes the draws, not the estimator: equal in distribution, so compare
  # two chunk sizes on many copies.
  a, b = bounds(20, 1000, 4, seed=6), bounds(20, 1000, 20, seed=7)
  assert abs(a.mean() - b.mean()) < 4 * math.hypot(a.std(), b.std()) / math.sqrt(a.size)


def test_eval_step_reports_an_iwae_bound_above_the_elbo(fast_compile):
  config = tiny_config()
  config.eval.iwae_samples, config.eval.iwae_chunk = 8, 4
  family = family_for(config)
  batch = digits_batch(4)
  params = perturbed(jax.jit(family.init)(jax.random.PRNGKey(0), batch).params, 0.05)
  out = jax.jit(family.eval_step)(params, batch, jax.random.PRNGKey(1))
  assert out["bpd_iwae"].shape == (4,) and np.all(np.isfinite(out["bpd_iwae"]))
  # One-draw ELBOs averaged over many draws vs the 8-draw bound (in bits/dim).
  repeated = dict(image=np.tile(batch["image"], (64, 1, 1, 1)))
  elbos = jax.jit(family.eval_step)(params, repeated, jax.random.PRNGKey(2))["bpd_elbo"]
  elbos = np.asarray(elbos).reshape(64, 4)
  assert np.all(np.asarray(out["bpd_iwae"]) < elbos.mean(0))
  config.eval.iwae_samples, config.eval.iwae_chunk = 10, 4
  with pytest.raises(ValueError, match="multiple of"):
    family_for(config)


# ------------------------------------------------------------------- sampling
def test_samples_are_uint8_and_temperature_scales_the_prior_spread(fast_compile):
  config = tiny_config()
  family = family_for(config)
  params = perturbed(jax.jit(family.init)(jax.random.PRNGKey(0), digits_batch()).params, 0.05)
  images = jax.jit(family.sample, static_argnums=2)(params, jax.random.PRNGKey(1), 5)
  assert images.shape == (5, 8, 8, 1) and images.dtype == jnp.uint8
  settings = family.sampler_settings()
  assert settings["temperature"] == 1.0 and settings["nfe"] == 1
  json.dumps(settings)
  # The first layer's prior depends on no earlier z: with the same noise,
  # z(t) - p_mean = t (z(1) - p_mean).
  prior_pass = jax.jit(lambda t: family._apply(
      params, 3, t, method=family.network.sample_prior, rng=jax.random.PRNGKey(2))[1][0])
  draws = {t: prior_pass(t) for t in (1.0, 0.3)}
  mean = np.asarray(draws[1.0]["p_mean"])
  np.testing.assert_allclose(np.asarray(draws[0.3]["z"]) - mean,
                             0.3 * (np.asarray(draws[1.0]["z"]) - mean), atol=1e-6)


def test_latents_round_trip_and_prefix_decoding(fast_compile):
  family = family_for(tiny_config())
  batch = digits_batch(4)
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  flat = jax.jit(family.encode_images)(params, batch["image"])
  assert flat.shape == (4, 4 * (1 + 16 + 64))       # zdim 4 at resolutions 1, 4, 8
  back = family.flatten_latents(family.unflatten_latents(flat))
  np.testing.assert_array_equal(np.asarray(back), np.asarray(flat))
  grids = family.image_grids(params, batch["image"], jax.random.PRNGKey(1))
  assert set(grids) == {"reconstructions", "interpolation_linear", "interpolation_slerp",
                        "latent_prefixes"}
  assert all(g.dtype == np.uint8 and g.ndim == 3 for g in grids.values())


# ------------------------------------------------------------------- training
@pytest.mark.integration
def test_training_lowers_test_bits_per_dim_on_digits(fast_compile):
  config = tiny_config()
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 10
  family = family_for(config)
  batches = datasets.make_train_batches(config.data, seed=0, global_batch_size=32)
  test = next(iter(datasets.make_eval_batches(config.data, split="test",
                                              global_batch_size=128, num_examples=128)))
  test = {k: test[k] for k in KEYS}
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batches.get(0))
  evaluate = jax.jit(family.eval_step)
  before = evaluate(state.params, test, jax.random.PRNGKey(1))
  step = jax.jit(family.train_step, donate_argnums=0)
  for _, batch in zip(range(150), batches.iterate(0)):
    state, metrics = step(state, {k: batch[k] for k in KEYS})
  after = evaluate(state.params, test, jax.random.PRNGKey(1))
  b, a = float(np.mean(before["bpd_elbo"])), float(np.mean(after["bpd_elbo"]))
  assert a < b - 0.6, (b, a)
  assert float(metrics["skipped"]) == 0.0
  parts = after["recon_nats"] + after["kl_nats"]
  np.testing.assert_allclose(np.asarray(after["bpd_elbo"]),
                             np.asarray(parts) / (64 * math.log(2.0)), rtol=1e-5)
  by_res = sum(after[f"kl_nats_res{r}"] for r in (1, 4, 8))
  np.testing.assert_allclose(np.asarray(by_res), np.asarray(after["kl_nats"]), rtol=1e-5)


@pytest.mark.slow   # tests/test_configs.py trains hvae_digits through the loop too
def test_train_and_evaluate_end_to_end_on_runlocal(tmp_path, monkeypatch, fast_compile):
  monkeypatch.setitem(families.FAMILIES, "hvae", hvae_lib.HierarchicalVAE)
  config = tiny_config()
  config.training.num_train_steps = 10
  config.training.log_every_steps = config.training.checkpoint_every_steps = 5
  config.training.sample_every_steps = 0   # sample() and image_grids() are tested above
  config.eval.sample_metrics = "none"
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 10
  report = json.load(open(tmp_path / "eval" / "step_00000010.json"))
  assert report["num_examples"] == 32 and np.isfinite(report["bpd_elbo"])
  assert {"recon_nats", "kl_nats", "kl_nats_res1", "kl_nats_res8"} <= set(report)
