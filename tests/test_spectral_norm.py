"""Spectral normalisation against numpy's SVD (Miyato et al. 2018)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import spectral_norm as sn_lib


def top_singular_value(matrix: np.ndarray) -> float:
  return float(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)[0])


def miyato_matrix(kernel: np.ndarray) -> np.ndarray:
  """A conv kernel [kh, kw, in, out] as Miyato's [out, in * kh * kw] matrix."""
  kernel = np.asarray(kernel, np.float64)
  return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)


@pytest.mark.parametrize("shape", [(20, 30), (30, 7), (3, 3, 4, 5), (4, 4, 6, 3)])
def test_power_iteration_finds_the_largest_singular_value(shape):
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal(shape).astype(np.float32)
  want = top_singular_value(kernel if len(shape) == 2 else miyato_matrix(kernel))
  u0 = sn_lib.l2_normalize(jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32))
  sigma, _, _ = sn_lib.power_iteration(sn_lib.as_matrix(jnp.asarray(kernel)), u0, 300)
  np.testing.assert_allclose(float(sigma), want, rtol=1e-4)
  normalized = np.asarray(kernel) / float(sigma)
  got = top_singular_value(normalized if len(shape) == 2 else miyato_matrix(normalized))
  np.testing.assert_allclose(got, 1.0, rtol=1e-4)


def test_gradient_of_sigma_is_the_outer_product_of_singular_vectors():
  """d sigma_1 / dW = u_1 v_1^T (a simple top singular value), u and v held fixed."""
  rng = np.random.default_rng(1)
  kernel = rng.standard_normal((6, 4))
  left, _, right_t = np.linalg.svd(kernel)
  u0 = jnp.asarray(rng.standard_normal(4), jnp.float32)
  grad = jax.grad(lambda k: sn_lib.power_iteration(k, u0, 300)[0])(
      jnp.asarray(kernel, jnp.float32))
  want = np.outer(left[:, 0], right_t[0])      # sign-invariant: both flip together
  np.testing.assert_allclose(np.asarray(grad), want, atol=1e-4)


def _train_calls(module, variables, x, num_calls):
  for _ in range(num_calls):
    _, state = module.apply(variables, x, mutable=[sn_lib.COLLECTION])
    variables = {**variables, **state}
  return variables


def test_sn_dense_converges_to_unit_spectral_norm_in_train_mode():
  x = jnp.eye(12)                     # probing with the identity reads off W / sigma
  variables = sn_lib.SNDense(9, use_bias=False).init(jax.random.PRNGKey(0), x)
  kernel = np.asarray(variables["params"]["kernel"])
  train = sn_lib.SNDense(9, use_bias=False, update_stats=True)
  variables = _train_calls(train, variables, x, 100)
  effective = np.asarray(sn_lib.SNDense(9, use_bias=False).apply(variables, x))
  np.testing.assert_allclose(top_singular_value(effective), 1.0, rtol=1e-3)
  np.testing.assert_allclose(effective * top_singular_value(kernel), kernel, rtol=1e-3,
                             atol=1e-5)


def test_sn_conv_divides_by_the_largest_singular_value_of_miyatos_reshape():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 4))
  init = sn_lib.SNConv(5, (3, 3), use_bias=False)
  variables = init.init(jax.random.PRNGKey(2), x)
  kernel = np.asarray(variables["params"]["kernel"])
  variables = _train_calls(sn_lib.SNConv(5, (3, 3), use_bias=False, update_stats=True),
                           variables, x, 100)
  y = init.apply(variables, x)
  plain = jax.lax.conv_general_dilated(x, jnp.asarray(kernel), (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  sigma = float(jnp.sum(plain * y) / jnp.sum(y * y))   # y = plain / sigma
  np.testing.assert_allclose(np.asarray(y) * sigma, np.asarray(plain), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(sigma, top_singular_value(miyato_matrix(kernel)), rtol=1e-3)


def test_eval_mode_does_not_change_u_and_train_mode_does():
  x = jnp.ones((3, 8))
  variables = sn_lib.SNDense(4).init(jax.random.PRNGKey(3), x)
  u0 = variables[sn_lib.COLLECTION]["u"]
  _, state = sn_lib.SNDense(4).apply(variables, x, mutable=[sn_lib.COLLECTION])
  np.testing.assert_array_equal(state[sn_lib.COLLECTION]["u"], u0)
  _, state = sn_lib.SNDense(4, update_stats=True).apply(variables, x,
                                                        mutable=[sn_lib.COLLECTION])
  assert not np.allclose(state[sn_lib.COLLECTION]["u"], u0)


def test_sn_embed_table_is_normalised():
  labels = jnp.arange(7)
  variables = sn_lib.SNEmbed(7, 5).init(jax.random.PRNGKey(4), labels)
  variables = _train_calls(sn_lib.SNEmbed(7, 5, update_stats=True), variables, labels, 100)
  table = np.asarray(sn_lib.SNEmbed(7, 5).apply(variables, labels))  # every row, in order
  np.testing.assert_allclose(top_singular_value(table), 1.0, rtol=1e-3)


def test_power_iteration_rejects_zero_iterations():
  with pytest.raises(ValueError, match="num_iters"):
    sn_lib.power_iteration(jnp.ones((2, 2)), jnp.ones(2), 0)


def test_sn_layer_inside_a_network_keeps_u_in_its_own_collection():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return sn_lib.SNDense(3, name="a")(nn.relu(sn_lib.SNDense(6, name="b")(x)))

  variables = Net().init(jax.random.PRNGKey(5), jnp.ones((1, 4)))
  assert set(variables) == {"params", sn_lib.COLLECTION}
  assert set(variables[sn_lib.COLLECTION]) == {"a", "b"}
  assert variables[sn_lib.COLLECTION]["b"]["u"].shape == (6,)
