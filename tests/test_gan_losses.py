"""GAN losses and penalties against hand-computed numbers and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import gan_losses

REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])

# Hand-computed with softplus(x) = log(1 + e^x), sigmoid(x) = 1 / (1 + e^-x):
# softplus(-2) = 0.1269280110, softplus(1) = 1.3132616875, softplus(0.5) = 0.9740769842,
# softplus(-3) = 0.0485873516, softplus(-0.5) = 0.4740769842, softplus(3) = 3.0485873516.
D_CASES = {
    # (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2; d/dreal = -sigmoid(-r) / 2,
    # d/dfake = sigmoid(f) / 2.
    "non_saturating": (1.2314270172, [-0.0596014610, -0.3655292893],
                       [0.3112296656, 0.0237129366]),
    # mean relu(1 - r) = (0 + 2) / 2, mean relu(1 + f) = (1.5 + 0) / 2.
    "hinge": (1.75, [0.0, -0.5], [0.5, 0.0]),
    # mean f - mean r = -1.25 - 0.5.
    "wasserstein": (-1.75, [-0.5, -0.5], [0.5, 0.5]),
    # 1/2 mean (r - 1)^2 + 1/2 mean f^2 = 1/2 (1 + 4) / 2 + 1/2 (0.25 + 9) / 2.
    "least_squares": (3.5625, [0.5, -1.0], [0.25, -1.5]),
}
G_CASES = {
    "non_saturating": (1.7613321679, [-0.1887703344, -0.4762870634]),  # (sp(-.5)+sp(3))/2
    "hinge": (1.25, [-0.5, -0.5]),
    "wasserstein": (1.25, [-0.5, -0.5]),
    "least_squares": (4.0625, [-0.25, -2.0]),   # 1/2 ((-0.5)^2 + (-4)^2) / 2
}


@pytest.mark.parametrize("name", gan_losses.LOSSES)
def test_discriminator_loss_value_and_gradient(name):
  want, grad_real, grad_fake = D_CASES[name]
  value, (g_real, g_fake) = jax.value_and_grad(
      lambda r, f: gan_losses.discriminator_loss(name, r, f), argnums=(0, 1))(REAL, FAKE)
  np.testing.assert_allclose(float(value), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g_real), grad_real, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g_fake), grad_fake, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", gan_losses.LOSSES)
def test_generator_loss_value_and_gradient(name):
  want, grad = G_CASES[name]
  value, g = jax.value_and_grad(lambda f: gan_losses.generator_loss(name, f))(FAKE)
  np.testing.assert_allclose(float(value), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g), grad, rtol=1e-5, atol=1e-7)


def test_unknown_loss_is_rejected():
  with pytest.raises(ValueError, match="config.gan.loss"):
    gan_losses.discriminator_loss("wgan", REAL, FAKE)
  with pytest.raises(ValueError, match="config.gan.loss"):
    gan_losses.generator_loss("wgan", FAKE)


# A small nonlinear discriminator, written twice: in JAX (float32) for the penalties and
# in numpy (float64) for central finite differences.
RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((12, 7)) * 0.5
W2 = RNG.standard_normal((7,))


def d_jax(x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.asarray(W1, jnp.float32))
  return h @ jnp.asarray(W2, jnp.float32)


def d_numpy(x):
  return np.tanh(x.reshape(x.shape[0], -1) @ W1) @ W2


def numeric_input_grads(x, eps=1e-6):
  x = np.asarray(x, np.float64)
  grads = np.zeros_like(x)
  flat = grads.reshape(x.shape[0], -1)
  for i in range(flat.shape[1]):
    step = np.zeros(flat.shape[1])
    step[i] = eps
    step = step.reshape(x.shape[1:])
    flat[:, i] = (d_numpy(x + step) - d_numpy(x - step)) / (2 * eps)
  return grads


def test_gradient_penalty_matches_finite_differences():
  """real == fake: every interpolate is that point, whatever eps."""
  x = RNG.standard_normal((5, 2, 2, 3))
  norms = np.linalg.norm(numeric_input_grads(x).reshape(5, -1), axis=1)
  want = np.mean((norms - 1.0) ** 2)
  xj = jnp.asarray(x, jnp.float32)
  got = gan_losses.gradient_penalty(d_jax, xj, xj, jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_gradient_penalty_samples_interpolates_uniformly():
  """D(x) = |x|^2 / 2 has grad x; with real = 0, x^ = (1 - eps) f, so the penalty
  averages ((1 - eps) c - 1)^2 over eps ~ U[0, 1]: c^2 / 3 - c + 1 for c = |f|."""
  n = 20000
  fake = jnp.broadcast_to(jnp.array([[3.0, 4.0]]), (n, 2))            # c = 5
  got = gan_losses.gradient_penalty(lambda x: 0.5 * jnp.sum(x * x, axis=1),
                                    jnp.zeros_like(fake), fake, jax.random.PRNGKey(1))
  c = 5.0
  np.testing.assert_allclose(float(got), c * c / 3 - c + 1, rtol=0.02)


def test_gradient_penalty_of_a_linear_critic_is_its_norm_gap():
  a = jnp.array([0.6, 0.8, 1.0])        # |a| = sqrt(2)
  real = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
  fake = jax.random.normal(jax.random.PRNGKey(3), (8, 3))
  got = gan_losses.gradient_penalty(lambda x: x @ a, real, fake, jax.random.PRNGKey(4))
  np.testing.assert_allclose(float(got), (np.sqrt(2.0) - 1.0) ** 2, rtol=1e-5)


def test_r1_penalty_matches_finite_differences():
  x = RNG.standard_normal((4, 3, 2, 2))
  want = np.mean(np.sum(numeric_input_grads(x).reshape(4, -1) ** 2, axis=1))
  got = gan_losses.r1_penalty(d_jax, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_r1_penalty_is_differentiable_in_the_discriminator_params():
  """The penalty's gradient wrt a weight scale s of D(x) = s w.x is 2 s |w|^2."""
  w = jnp.array([1.0, -2.0, 0.5])
  x = jnp.ones((3, 3))
  grad = jax.grad(lambda s: gan_losses.r1_penalty(lambda v: s * (v @ w), x))(1.5)
  np.testing.assert_allclose(float(grad), 2 * 1.5 * float(w @ w), rtol=1e-5)


def test_orthogonal_regularization_against_numpy():
  rng = np.random.default_rng(5)
  conv = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
  dense = rng.standard_normal((6, 4)).astype(np.float32)
  params = {"conv": {"kernel": conv, "bias": np.ones(5, np.float32)},
            "dense": {"kernel": dense}, "embed": {"embedding": np.ones((3, 3), np.float32)}}
  want = 0.0
  for k in (conv.reshape(-1, 5), dense):
    gram = k.astype(np.float64).T @ k
    want += np.sum((gram - np.diag(np.diag(gram))) ** 2)
  got = gan_losses.orthogonal_regularization(params, 1e-4)
  np.testing.assert_allclose(float(got), 1e-4 * want, rtol=1e-5)
  q, _ = np.linalg.qr(rng.standard_normal((6, 4)))         # orthonormal columns
  zero = gan_losses.orthogonal_regularization({"kernel": q * 3.0}, 1.0)
  np.testing.assert_allclose(float(zero), 0.0, atol=1e-8)
