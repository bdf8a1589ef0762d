"""The VAE family: decoders, KL schedule, free bits, steps, the loop, latent grids."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import datasets
from configs import vae_binarized_mnist, vae_digits
from sampling import latent
from train import families, loop
from train import vae as vae_lib

LEVELS = np.arange(256)
CENTERS = LEVELS / 127.5 - 1.0     # the 256 bin centres of [-1, 1]


def tiny_config(decoder="discretized_logistic", **model):
  config = vae_digits.get_config("runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.model.ch = 8
  config.model.latent_dim = 4
  config.model.decoder = decoder
  for k, v in model.items():
    config.model[k] = v
  config.training.async_checkpointing = False
  return config


def family_for(config):
  info = datasets.get_dataset_info(config.data)
  return vae_lib.VAE(config, info.image_shape, info.num_classes), info


# ------------------------------------------------------------------ decoders
@pytest.mark.parametrize("decoder", ["gaussian", "discretized_logistic"])
def test_family_decoders_sum_to_one_over_256_values(decoder):
  """Through the family's own log_likelihood, with decoder outputs of one pixel."""
  family, _ = family_for(tiny_config(decoder))
  rng = np.random.default_rng(0)
  raw = np.stack([rng.normal(size=3), rng.uniform(-6, 0, size=3)], -1)   # 3 pixels
  decoder_params = jnp.asarray(np.broadcast_to(raw[:, None, None, None, None], (3, 256, 1, 1, 1,
                                                                         2)), jnp.float32)
  x = jnp.asarray(np.broadcast_to(CENTERS[None, :, None, None, None], (3, 256, 1, 1, 1)),
                  jnp.float32)
  log_p = np.asarray(family.log_likelihood(x, decoder_params), np.float64)  # [3, 256]
  np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-4)
  if decoder == "gaussian":
    edges = np.concatenate([[-np.inf], CENTERS[:-1] + 1 / 255, [np.inf]])
    want = np.diff(stats.norm.cdf(edges[None], raw[:, :1], np.exp(raw[:, 1:])), axis=1)
    big = want > 1e-6
    np.testing.assert_allclose(np.exp(log_p[big]), want[big], rtol=2e-3)


def test_logistic_mixture_decoder_sums_to_one_and_trains(fast_compile):
  config = tiny_config("logistic_mixture", num_mixtures=2)
  config.optim.warmup_steps = 0
  config.eval.iwae_samples = config.eval.iwae_chunk = 2
  family, info = family_for(config)
  num_params = family._params_per_subpixel()                   # C = 1: 3 M = 6
  raw = np.random.default_rng(0).normal(size=(2, num_params))   # 2 pixels' outputs
  decoder_params = jnp.asarray(np.broadcast_to(
      raw[:, None, None, None, None], (2, 256, 1, 1, 1, num_params)), jnp.float32)
  x = jnp.asarray(np.broadcast_to(CENTERS[None, :, None, None, None], (2, 256, 1, 1, 1)),
                  jnp.float32)
  log_p = np.asarray(family.log_likelihood(x, decoder_params), np.float64)
  np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-4)
  batch = datasets.make_train_batches(config.data, seed=0, global_batch_size=4).get(0)
  batch = {k: batch[k] for k in ("image", "label")}
  state, metrics = jax.jit(family.train_step)(family.init(jax.random.PRNGKey(0), batch),
                                              batch)
  out = jax.jit(family.eval_step)(state.params, batch, jax.random.PRNGKey(1))
  assert np.all(np.isfinite(out["bpd_iwae"])) and np.isfinite(float(metrics["loss"]))
  images = jax.jit(family.sample, static_argnums=2)(state.params, jax.random.PRNGKey(2), 3)
  assert images.shape == (3, *info.image_shape)


# ------------------------------------------------------------ KL weighting
def test_kl_warmup_is_linear_from_zero_to_beta():
  values = [float(vae_lib.kl_weight(s, 0.5, 100)) for s in (0, 25, 50, 100, 1000)]
  np.testing.assert_allclose(values, [0.0, 0.125, 0.25, 0.5, 0.5])
  assert float(vae_lib.kl_weight(0, 2.0, 0)) == 2.0


def test_free_bits_floor_the_batch_average_kl_per_dimension():
  kl = jnp.array([[0.1, 2.0, 0.0], [0.3, 4.0, 0.2]])   # batch means 0.2, 3.0, 0.1
  np.testing.assert_allclose(vae_lib.free_bits_kl(kl, 0.5), 0.5 + 3.0 + 0.5)
  np.testing.assert_allclose(vae_lib.free_bits_kl(kl, 0.0), 3.3, rtol=1e-6)
  grad = np.asarray(jax.grad(vae_lib.free_bits_kl)(kl, 0.5))
  np.testing.assert_array_equal(grad, [[0, 0.5, 0], [0, 0.5, 0]])  # only dim 1 pays


def test_kl_weight_reaches_the_loss(fast_compile):
  """With beta=0 the loss is the reconstruction term alone; with beta=1 it adds the KL."""
  family, info = family_for(tiny_config())
  batch = datasets.make_train_batches(family.config.data, seed=0,
                                      global_batch_size=8).get(0)
  state = family.init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(1)
  family.config.model.kl_warmup_steps = 0
  family.config.model.beta = 0.0
  loss0, m0 = jax.jit(family.loss)(state.params, batch, rng, jnp.int32(0))
  family.config.model.beta = 1.0      # the config is read at trace time: a fresh jit
  loss1, m1 = jax.jit(family.loss)(state.params, batch, rng, jnp.int32(0))
  to_bpd = 1 / (np.prod(info.image_shape) * np.log(2))
  np.testing.assert_allclose(loss0, m0["recon_nats"] * to_bpd, rtol=1e-5)
  np.testing.assert_allclose(loss1, (m1["recon_nats"] + m1["kl_nats"]) * to_bpd, rtol=1e-5)


# --------------------------------------------------------------------- steps
def test_one_train_step_and_eval_step(fast_compile):
  config = tiny_config()
  config.optim.warmup_steps = 0        # a learning rate of 0 at step 0 would change nothing
  family, info = family_for(config)
  batch = datasets.make_train_batches(family.config.data, seed=0,
                                      global_batch_size=8).get(0)
  batch = {k: batch[k] for k in ("image", "label")}
  state = family.init(jax.random.PRNGKey(0), batch)
  new_state, metrics = jax.jit(family.train_step)(state, batch)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                    jax.tree.leaves(new_state.params))]
  assert any(changed)
  out = jax.jit(family.eval_step)(new_state.params, batch, jax.random.PRNGKey(2))
  assert set(out) == {"bpd_elbo", "bpd_iwae", "kl_nats"}
  assert out["bpd_iwae"].shape == (8,)
  # With k = 20 samples the IWAE bound is the tighter one (Burda et al. Theorem 1).
  assert np.mean(out["bpd_iwae"]) <= np.mean(out["bpd_elbo"]) + 0.01
  images = jax.jit(family.sample, static_argnums=2)(new_state.params,
                                                    jax.random.PRNGKey(3), 5)
  assert images.shape == (5, *info.image_shape) and images.dtype == jnp.uint8


@pytest.mark.parametrize("decoder,output", [("bernoulli", "mean"), ("bernoulli", "sample"),
                                            ("gaussian", "sample"),
                                            ("discretized_logistic", "sample")])
def test_samples_of_every_decoder(decoder, output, fast_compile):
  config = tiny_config(decoder)
  config.sampling.decoder_output = output
  family, info = family_for(config)
  state = family.init(jax.random.PRNGKey(0), {"image": np.zeros((1, *info.image_shape),
                                                                np.uint8)})
  images = np.asarray(family.sample(state.params, jax.random.PRNGKey(1), 6))
  assert images.shape == (6, *info.image_shape) and images.dtype == np.uint8
  if decoder == "bernoulli" and output == "sample":
    assert set(np.unique(images)) <= {0, 255}


def test_binarizations():
  images = jnp.asarray(np.array([0, 1, 127, 128, 255], np.uint8).reshape(1, 5, 1, 1))
  expected = {"threshold": [0, 0, 0, 1, 1], "binary": [0, 1, 1, 1, 1]}
  for mode, want in expected.items():
    family, _ = family_for(tiny_config("bernoulli", binarization=mode))
    np.testing.assert_array_equal(family.prepare(images, None).ravel(), want)
  family, _ = family_for(tiny_config("bernoulli", binarization="dynamic"))
  many = jnp.full((20000, 1, 1, 1), 64, jnp.uint8)
  draws = np.asarray(family.prepare(many, jax.random.PRNGKey(0)))
  assert set(np.unique(draws)) == {0.0, 1.0}
  assert abs(draws.mean() - 64 / 255) < 0.01


def test_bernoulli_eval_reports_nats(fast_compile):
  family, _ = family_for(tiny_config("bernoulli"))
  batch = datasets.make_train_batches(family.config.data, seed=0,
                                      global_batch_size=4).get(0)
  state = family.init(jax.random.PRNGKey(0), batch)
  out = jax.jit(family.eval_step)(state.params, batch, jax.random.PRNGKey(1))
  dims = 8 * 8 * 1
  np.testing.assert_allclose(out["nll_nats_iwae"] / (dims * np.log(2)), out["bpd_iwae"],
                             rtol=1e-5)
  assert np.mean(out["nll_nats_elbo"]) >= np.mean(out["nll_nats_iwae"]) - 0.05


def test_iwae_training_objective_runs(fast_compile):
  family, _ = family_for(tiny_config(train_samples=3, kl_warmup_steps=0))
  batch = datasets.make_train_batches(family.config.data, seed=0,
                                      global_batch_size=4).get(0)
  state = family.init(jax.random.PRNGKey(0), batch)
  _, metrics = jax.jit(family.train_step)(state, {k: batch[k] for k in ("image", "label")})
  assert np.isfinite(float(metrics["loss"]))


def test_bad_configs_are_refused_before_compiling():
  with pytest.raises(ValueError, match="model.decoder='poisson'"):
    family_for(tiny_config("poisson"))
  with pytest.raises(ValueError, match="trains the IWAE bound"):
    family_for(tiny_config(train_samples=5, beta=0.5))
  with pytest.raises(ValueError, match="cannot be halved 4 times"):
    family_for(tiny_config(ch_mult=(1, 1, 1, 1)))
  config = tiny_config()
  config.eval.iwae_samples = 25
  with pytest.raises(ValueError, match="multiple of config.eval.iwae_chunk"):
    family_for(config)


# ---------------------------------------------------------------------- loop
@pytest.mark.integration
def test_train_and_evaluate_end_to_end_on_runlocal(tmp_path, monkeypatch, fast_compile):
  monkeypatch.setitem(families.FAMILIES, "vae", vae_lib.VAE)
  config = vae_digits.get_config("runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.training.async_checkpointing = False
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 20
  report = json.load(open(tmp_path / "eval" / "step_00000020.json"))
  assert report["num_examples"] == 32
  assert np.isfinite(report["bpd_elbo"]) and report["bpd_iwae"] <= report["bpd_elbo"]
  assert os.path.exists(tmp_path / "samples" / "train_step_00000020.png")


@pytest.mark.integration
def test_training_reduces_test_bits_per_dim_on_digits(fast_compile):
  config = tiny_config(latent_dim=8, kl_warmup_steps=100)
  config.model.ch = 16
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 20
  family, info = family_for(config)
  batches = datasets.make_train_batches(config.data, seed=0, global_batch_size=32)
  test = next(iter(datasets.make_eval_batches(config.data, split="test",
                                              global_batch_size=128, num_examples=128)))
  test = {k: test[k] for k in ("image", "label")}
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batches.get(0))
  evaluate = jax.jit(family.eval_step)
  before = evaluate(state.params, test, jax.random.PRNGKey(1))
  step = jax.jit(family.train_step, donate_argnums=0)
  for _, batch in zip(range(300), batches.iterate(0)):
    state, _ = step(state, {k: batch[k] for k in ("image", "label")})
  after = evaluate(state.params, test, jax.random.PRNGKey(1))
  b_elbo, a_elbo = float(np.mean(before["bpd_elbo"])), float(np.mean(after["bpd_elbo"]))
  a_iwae = float(np.mean(after["bpd_iwae"]))
  assert b_elbo > 4.5, b_elbo           # an untrained decoder: scale ~1 over [-1, 1]
  assert a_elbo < b_elbo - 1.0, (b_elbo, a_elbo)
  assert a_iwae <= a_elbo + 1e-3


# ------------------------------------------------------------- latent tools
def test_slerp_endpoints_norm_and_constant_angular_speed():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=8), rng.normal(size=8)
  b *= np.linalg.norm(a) / np.linalg.norm(b)
  t = np.linspace(0, 1, 7)
  path = latent.slerp(a, b, t)
  np.testing.assert_allclose(path[0], a, atol=1e-12)
  np.testing.assert_allclose(path[-1], b, atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-10)
  cos = path @ a / (np.linalg.norm(path, axis=1) * np.linalg.norm(a))
  angles = np.arccos(np.clip(cos, -1, 1))
  np.testing.assert_allclose(angles, t * angles[-1], atol=1e-7)
  np.testing.assert_allclose(latent.lerp(a, b, np.array([0.25]))[0], 0.75 * a + 0.25 * b)
  # Parallel vectors: no arc, a straight line.
  np.testing.assert_allclose(latent.slerp(a, 2 * a, t), latent.lerp(a, 2 * a, t))


def test_reconstruction_and_interpolation_grids_layout():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(4, 3, 3, 1), dtype=np.uint8)
  recon = 255 - images
  grid = latent.reconstruction_grid(images, recon)
  assert grid.shape == (2 * 4 + 1, 4 * 4 + 1, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1:4, 5:8], images[1])      # top row: inputs
  np.testing.assert_array_equal(grid[5:8, 5:8], recon[1])       # bottom row: recons

  # Identity "autoencoder" on pixel values: linear interpolation averages the images.
  def encode(x):
    return x.reshape(len(x), -1).astype(np.float32)

  def decode(z):
    return np.round(z).astype(np.uint8).reshape(-1, 3, 3, 1)

  starts = np.zeros((2, 3, 3, 1), np.uint8)
  ends = np.full((2, 3, 3, 1), 200, np.uint8)
  grid = latent.interpolation_grid(encode, decode, starts, ends, num_steps=5)
  assert grid.shape == (2 * 4 + 1, 7 * 4 + 1, 1)
  middle = grid[1:4, 1 + 3 * 4:1 + 3 * 4 + 3]   # column 3 = step 2 of 5 (t = 0.5)
  np.testing.assert_array_equal(middle, 100)
  grids = latent.latent_grids(encode, decode, rng.integers(0, 256, (4, 3, 3, 1),
                                                           dtype=np.uint8), num_steps=3)
  assert set(grids) == {"reconstructions", "interpolation_linear", "interpolation_slerp"}
  with pytest.raises(ValueError, match="choose one of"):
    latent.interpolation_path(np.zeros(2), np.ones(2), 4, "cubic")


def test_latent_tools_with_the_family(fast_compile):
  family, info = family_for(tiny_config())
  state = family.init(jax.random.PRNGKey(0), {"image": np.zeros((1, *info.image_shape),
                                                                np.uint8)})
  images = datasets.make_train_batches(family.config.data, seed=0,
                                       global_batch_size=4).get(0)["image"]
  rng = jax.random.PRNGKey(0)
  grids = latent.latent_grids(
      lambda x: family.encode_images(state.params, x, rng),
      lambda z: family.decode_images(state.params, z, rng), images, num_steps=4)
  assert grids["interpolation_slerp"].shape == (2 * 9 + 1, 6 * 9 + 1, 1)
  recon = family.reconstruct(state.params, images, rng)
  assert recon.shape == images.shape and recon.dtype == jnp.uint8


def test_binarized_mnist_config_has_the_papers_settings():
  c = vae_binarized_mnist.get_config()
  assert (c.model.architecture, tuple(c.model.hidden_sizes), c.model.latent_dim,
          c.model.decoder) == ("mlp", (200, 200), 50, "bernoulli")
  assert (c.optim.beta1, c.optim.beta2, c.optim.eps, c.training.batch_size,
          c.eval.iwae_samples) == (0.9, 0.999, 1e-4, 20, 5000)
  assert c.training.num_train_steps * 20 == 3280 * 60_000
  assert vae_binarized_mnist.get_config("iwae").model.train_samples == 50
  assert vae_binarized_mnist.get_config("static,runlocal").data.dataset == "binarized_mnist"
