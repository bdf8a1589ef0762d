"""VQ-VAE: the quantizer against numpy, a short digits run, and the prior stage."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import datasets
from configs import vqvae_cifar, vqvae_digits
from models import vqvae as vq
from train import loop
from train import run as run_lib
from train import vqvae as vqvae_family

K_TEST = 16   # codebook size of the trained test model


# ------------------------------------------------------------------ quantizer
def test_nearest_code_is_the_brute_force_nearest():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
  codebook = rng.normal(size=(7, 4)).astype(np.float32)
  codes = np.asarray(vq.nearest_codes(jnp.asarray(z), jnp.asarray(codebook)))
  flat = z.reshape(-1, 4)
  expected = [min(range(7), key=lambda k: sum((flat[n, d] - codebook[k, d]) ** 2
                                              for d in range(4)))
              for n in range(len(flat))]
  np.testing.assert_array_equal(codes.reshape(-1), expected)
  np.testing.assert_allclose(
      vq.squared_distances(jnp.asarray(flat), jnp.asarray(codebook)),
      ((flat[:, None, :] - codebook[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)


def test_straight_through_copies_the_decoder_gradient_to_the_encoder():
  """Identity decoder, loss L(v) = sum(a v^2 / 2 + b v): dL/dz_e = a z_q + b, the
  gradient of the decoder loss at z_q (not at z_e), and the codebook gets none."""
  rng = np.random.default_rng(1)
  z_e = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
  codebook = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  a = jnp.asarray(rng.uniform(1, 2, size=(4,)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(4,)), jnp.float32)

  def loss(z, e):
    z_q = e[vq.nearest_codes(jax.lax.stop_gradient(z), e)]
    v = vq.straight_through(z, z_q)
    return jnp.sum(a * v ** 2 / 2 + b * v)

  grad_z, grad_e = jax.grad(loss, argnums=(0, 1))(z_e, codebook)
  z_q = np.asarray(codebook)[np.asarray(vq.nearest_codes(z_e, codebook))]
  np.testing.assert_allclose(grad_z, np.asarray(a) * z_q + np.asarray(b), rtol=1e-6)
  assert np.all(np.asarray(grad_z) != 0)
  np.testing.assert_array_equal(grad_e, 0.0)


def test_commitment_and_codebook_losses():
  rng = np.random.default_rng(2)
  z_e = rng.normal(size=(2, 3, 3, 2, 4)).astype(np.float32)    # [B, h, w, G, D]
  z_q = rng.normal(size=z_e.shape).astype(np.float32)
  # The mean over the 18 latents of each example of the squared distance (sum over D).
  expected = np.array([np.mean([np.sum((z_e[i].reshape(-1, 4)[n] - z_q[i].reshape(-1, 4)[n])
                                       ** 2) for n in range(18)]) for i in range(2)])
  np.testing.assert_allclose(vq.commitment_loss(z_e, z_q), expected, rtol=1e-5)
  np.testing.assert_allclose(vq.codebook_loss(z_e, z_q), expected, rtol=1e-5)
  # Commitment trains only z_e (d/dz_e = 2 (z_e - z_q) / N); the codebook term only e.
  g_e, g_q = jax.grad(lambda a, b: vq.commitment_loss(a, b)[0], argnums=(0, 1))(
      jnp.asarray(z_e), jnp.asarray(z_q))
  np.testing.assert_allclose(g_e[0], 2 * (z_e[0] - z_q[0]) / 18, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(g_q, 0.0)
  g_e, g_q = jax.grad(lambda a, b: vq.codebook_loss(a, b)[0], argnums=(0, 1))(
      jnp.asarray(z_e), jnp.asarray(z_q))
  np.testing.assert_array_equal(g_e, 0.0)
  np.testing.assert_allclose(g_q[0], 2 * (z_q[0] - z_e[0]) / 18, rtol=1e-5, atol=1e-7)


def test_ema_codebook_update_matches_the_formula_by_hand():
  gamma, eps = 0.9, 0.01
  size = np.array([2.0, 0.5, 1.0], np.float32)
  embed_sum = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]], np.float32)
  z = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 4.0]], np.float32)
  codes = np.array([0, 2, 0, 0])
  # Code 0 gets z_0, z_2, z_3 (n=3, sum (2, 6)); code 1 nothing; code 2 gets z_1.
  n_new = np.array([2.0 * 0.9 + 0.1 * 3, 0.5 * 0.9, 1.0 * 0.9 + 0.1 * 1])
  m_new = np.array([[0.9 * 1 + 0.1 * 2, 0.9 * 2 + 0.1 * 6], [0.0, -0.9],
                    [0.9 * 3 + 0.1 * 0, 0.9 * 3 + 0.1 * 1]])
  total = n_new.sum()
  smoothed = (n_new + eps) / (total + 3 * eps) * total
  new_size, new_sum, codebook = vq.ema_codebook_update(
      jnp.asarray(size), jnp.asarray(embed_sum), jnp.asarray(z), jnp.asarray(codes),
      decay=gamma, epsilon=eps)
  np.testing.assert_allclose(new_size, n_new, rtol=1e-6)
  np.testing.assert_allclose(new_sum, m_new, rtol=1e-6)
  np.testing.assert_allclose(codebook, m_new / smoothed[:, None], rtol=1e-5)


def test_dead_codes_are_restarted_on_encoder_outputs():
  rng = np.random.default_rng(3)
  codebook = rng.normal(size=(6, 3)).astype(np.float32)
  size = np.array([5.0, 0.1, 2.0, 0.0, 0.99, 1.0], np.float32)
  embed_sum = codebook * size[:, None]
  z = rng.normal(size=(40, 3)).astype(np.float32) + 10.0   # far from every code
  new_codebook, new_size, new_sum, dead = vq.restart_dead_codes(
      jnp.asarray(codebook), jnp.asarray(size), jnp.asarray(z), jax.random.PRNGKey(0),
      1.0, jnp.asarray(embed_sum))
  expected_dead = size < 1.0
  np.testing.assert_array_equal(dead, expected_dead)
  new_codebook = np.asarray(new_codebook)
  np.testing.assert_array_equal(new_codebook[~expected_dead], codebook[~expected_dead])
  restarted = new_codebook[expected_dead]
  for row in restarted:    # each restarted code is one of this batch's encoder outputs
    assert np.any(np.all(z == row, axis=1))
  assert len({tuple(r) for r in restarted}) == len(restarted)   # distinct outputs
  np.testing.assert_array_equal(np.asarray(new_size)[expected_dead], vq.RESTART_COUNT)
  np.testing.assert_array_equal(np.asarray(new_size)[~expected_dead], size[~expected_dead])
  np.testing.assert_allclose(np.asarray(new_sum)[expected_dead],
                             vq.RESTART_COUNT * restarted)
  # Threshold 0 restarts nothing.
  assert not np.any(vq.restart_dead_codes(jnp.asarray(codebook), jnp.asarray(size),
                                          jnp.asarray(z), jax.random.PRNGKey(0), 0.0)[3])


def test_perplexity_and_uniform_prior_bound():
  assert float(vq.perplexity(jnp.full((8,), 3.0))) == pytest.approx(8.0, rel=1e-5)
  assert float(vq.perplexity(jnp.array([0.0, 5.0, 0.0]))) == pytest.approx(1.0)
  counts = np.array([1.0, 3.0, 0.0, 4.0])
  p = counts[counts > 0] / 8
  assert float(vq.perplexity(jnp.asarray(counts))) == pytest.approx(
      np.exp(-np.sum(p * np.log(p))), rel=1e-5)
  # CIFAR-10's 8x8x10 latents with K=512: 640 * 9 bits over 3072 dims on top of
  # the reconstruction term.
  log_lik = jnp.array([-5000.0, -7000.0])
  np.testing.assert_allclose(
      vqvae_family.uniform_prior_bound_bpd(log_lik, 640, 512, 3072),
      (np.array([5000.0, 7000.0]) / np.log(2) + 640 * 9) / 3072, rtol=1e-6)


def test_prior_is_causal_over_positions_and_latents_of_a_position(fast_compile):
  """Logits of latent t depend only on latents before t (raster, then the G=2)."""
  prior = vq.CodePrior(num_codes=5, latents_per_position=2, embed_dim=3, ch=8,
                       num_layers=2, kernel_size=3, first_kernel_size=3,
                       head_features=16)
  codes = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (1, 3, 3, 2), 0, 5))
  order = [(i, j, g) for i in range(3) for j in range(3) for g in range(2)]
  # Row 0: the codes; row 1 + t: latent t changed. One network call for all.
  batch = np.repeat(codes, len(order) + 1, axis=0)
  for t, (i, j, g) in enumerate(order):
    batch[1 + t, i, j, g] = (batch[1 + t, i, j, g] + 1) % 5
  params = jax.jit(prior.init)(jax.random.PRNGKey(1), jnp.asarray(codes))["params"]
  logits = np.asarray(jax.jit(prior.apply)({"params": params}, jnp.asarray(batch)))
  for t in range(len(order)):
    differs = [bool(np.any(np.abs(logits[1 + t][a, b, c] - logits[0][a, b, c]) > 1e-6))
               for a, b, c in order]
    assert not any(differs[:t + 1]), (t, differs)   # never itself or earlier latents
    if t + 1 < len(order):
      assert differs[t + 1], (t, differs)             # the next latent sees it


# ----------------------------------------------------------- training, digits
def _digits_config(stage_arg, data_dir):
  config = vqvae_digits.get_config(stage_arg)
  config.data.data_dir = data_dir
  config.eval.sample_metrics = "none"
  config.eval.num_eval_examples = 64
  config.eval.batch_size = 64
  t = config.training
  t.batch_size = 32
  t.log_every_steps = t.checkpoint_every_steps = 150
  t.num_train_steps = 150
  t.sample_every_steps = 0
  t.async_checkpointing = False
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 10
  return config


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
  """A 150-step stage-1 run on digits: K=16 codes of D=8 on a 4x4 map."""
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    config = _digits_config(None, os.environ.get("TFDS_DATA_DIR"))
    config.vq.num_codes = K_TEST
    config.vq.code_dim = 8
    config.model.ch = 32
    config.model.res_ch = 16
    config.model.num_res_blocks = 1
    workdir = str(tmp_path_factory.mktemp("vqvae") / "stage1")
    state = loop.train_and_evaluate(config, workdir)
    yield config, workdir, state
  finally:
    jax.config.update("jax_disable_most_optimizations", False)


def _eval_batch(config, n=64):
  return next(iter(datasets.make_eval_batches(config.data, split="test",
                                              global_batch_size=n, num_examples=n)))


@pytest.mark.integration
def test_training_lowers_the_loss_and_uses_most_codes(stage1):
  config, workdir, state = stage1
  info = datasets.get_dataset_info(config.data)
  family = vqvae_family.VQVAE(config, info.image_shape, info.num_classes)
  images = jnp.asarray(_eval_batch(config)["image"])
  initial = family.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), run_lib.INIT),
                        {"image": images[:1], "label": jnp.zeros((1,), jnp.int32)})
  loss_fn = jax.jit(lambda p, s: family.autoencoder_loss(p, s, images)[0])
  before = float(loss_fn(initial.params, initial.model_state))
  after = float(loss_fn(state.params, state.model_state))
  assert after < before - 0.5, (before, after)
  # The EMA codebook lives in model_state, apart from what the optimizer updates.
  assert "codebook" not in state.params and "codebook" in state.model_state
  bundle = family.sampling_params(state, use_ema=False)
  codes = np.asarray(family.autoencoder.encode_codes(bundle, images))
  assert codes.shape == (64, 4, 4, 1)
  assert len(np.unique(codes)) >= K_TEST // 2, np.unique(codes)
  # The eval JSON's bound is the reconstruction term plus N log2 K bits.
  report = json.load(open(os.path.join(workdir, "eval", "step_00000150.json")))
  assert report["bpd"] == pytest.approx(report["recon_bpd"] + 16 * math.log2(K_TEST) / 64,
                                        rel=1e-6)
  grids = family.image_grids(bundle, np.asarray(images[:4]), jax.random.PRNGKey(0))
  assert grids["reconstructions"].dtype == np.uint8


def _prior_family(stage1_workdir, config1):
  config = _digits_config("prior,runlocal", config1.data.data_dir)
  config.vq.num_codes, config.vq.code_dim = config1.vq.num_codes, config1.vq.code_dim
  config.vq.autoencoder_workdir = stage1_workdir
  config.optim.warmup_steps = 0       # the first step moves the params
  info = datasets.get_dataset_info(config.data)
  return config, vqvae_family.VQVAE(config, info.image_shape, info.num_classes)


@pytest.mark.integration
def test_prior_stage_restores_stage1_exactly_trains_and_samples(stage1):
  config1, workdir, state1 = stage1
  config, family = _prior_family(workdir, config1)
  # Independently of the family: orbax's own restore of the newest checkpoint.
  saved = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", "150", "state"))
  assert not config1.sampling.use_ema   # so the raw params are the ones evaluated
  np.testing.assert_array_equal(family.frozen_bundle["codebook"],
                                np.asarray(saved["model_state"]["codebook"]))
  for a, b in zip(jax.tree.leaves(family.frozen_bundle["network"]),
                  jax.tree.leaves(saved["params"]["network"])):
    np.testing.assert_array_equal(a, np.asarray(b))
  batch = {k: jnp.asarray(v[:8]) for k, v in _eval_batch(config).items()
           if k in ("image", "label")}
  state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
  new_state, metrics = jax.jit(family.train_step)(state, batch)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)))
  for a, b in zip(jax.tree.leaves(state.model_state),
                  jax.tree.leaves(new_state.model_state)):
    np.testing.assert_array_equal(a, b)   # the autoencoder stays frozen
  params = family.sampling_params(new_state, use_ema=True)
  out = jax.jit(family.eval_step)(params, batch, jax.random.PRNGKey(0))
  # bpd = reconstruction + the prior's bits over the 16 codes, per image dimension.
  np.testing.assert_allclose(out["bpd"], out["recon_bpd"] + out["bits_per_code"] * 16 / 64,
                             rtol=1e-5)
  images = jax.jit(family.sample, static_argnums=2)(params, jax.random.PRNGKey(1), 3)
  assert images.dtype == jnp.uint8 and images.shape == (3, 8, 8, 1)
  assert family.sampler_settings()["nfe"] == 16


@pytest.mark.integration
def test_prior_stage_refuses_a_missing_or_foreign_workdir(stage1, tmp_path):
  config1, _, _ = stage1
  with pytest.raises(ValueError, match="autoencoder_workdir"):
    _prior_family(None, config1)
  with pytest.raises(ValueError, match="does not exist"):
    _prior_family(str(tmp_path / "nowhere"), config1)
  foreign = tmp_path / "ddpm_run"
  foreign.mkdir()
  (foreign / "config.json").write_text(json.dumps({"model.family": "ddpm"}))
  with pytest.raises(ValueError, match="stage-1 run"):
    _prior_family(str(foreign), config1)


def test_bad_config_values_raise_before_compiling():
  config = vqvae_cifar.get_config()
  config.vq.codebook_update = "kmeans"
  with pytest.raises(ValueError, match="codebook_update"):
    vqvae_family.VQVAE(config, (32, 32, 3), 10)
  config = vqvae_cifar.get_config()
  with pytest.raises(ValueError, match="num_downsamples"):
    vqvae_family.VQVAE(config, (30, 30, 3), 10)
  with pytest.raises(ValueError, match="has no argument 'priors'"):
    vqvae_cifar.get_config("priors")


def test_codebook_loss_mode_trains_the_codebook_and_restarts_dead_codes(fast_compile):
  """The paper's setting (codebook in params, eq. 3) plus restarts on the params."""
  config = vqvae_digits.get_config("runlocal")
  config.vq.codebook_update = "loss"
  config.vq.dead_code_threshold = 1.0
  config.optim.warmup_steps = 0
  family = vqvae_family.VQVAE(config, (8, 8, 1), 10)
  images = jax.random.randint(jax.random.PRNGKey(0), (4, 8, 8, 1), 0, 256).astype(jnp.uint8)
  batch = dict(image=images, label=jnp.zeros((4,), jnp.int32))
  state = family.init(jax.random.PRNGKey(1), batch)
  assert set(state.model_state) == {"cluster_size"} and "codebook" in state.params
  new_state, metrics = jax.jit(family.train_step)(state, batch)
  # 4 images x 16 latents cannot use all 32 codes: the unused ones (usage 0.99 < 1)
  # restart onto encoder outputs; the used ones moved by the codebook loss's gradient.
  assert 0 < float(metrics["codes_restarted"]) < 1
  assert float(metrics["codebook_loss"]) > 0
  assert not np.allclose(new_state.params["codebook"], state.params["codebook"])
  images = jax.jit(family.sample, static_argnums=2)(
      family.sampling_params(new_state, use_ema=False), jax.random.PRNGKey(2), 2)
  assert images.shape == (2, 8, 8, 1) and images.dtype == jnp.uint8
  assert family.sampler_settings()["nfe"] == 1
