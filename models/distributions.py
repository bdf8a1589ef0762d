"""Log-likelihoods and KL divergences shared by the families, as pure functions.

Every function is elementwise (broadcasting its arguments) and returns nats,
unless its name says otherwise; callers sum over the axes they model.

Images are modelled on [-1, 1] with the 256 levels k / 127.5 - 1, 2/255 apart.
A discretized density (Ho et al. 2020, eq. 13; Salimans et al. 2017, eq. 2)
gives level x the mass of its bin [x - 1/255, x + 1/255], the lowest level's
bin extended to -inf and the highest's to +inf, so the 256 masses sum to 1 and
its bits/dim are those of a proper discrete likelihood.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

# Half the width of one of the 256 bins on the [-1, 1] scale.
HALF_BIN = 1.0 / 255.0
# |x| beyond this is the lowest / highest level, whose bin reaches -inf / +inf
# (any threshold between the two outermost levels, 1 - 2/255 and 1, will do).
EDGE = 0.999
# Discretized logistic log-scales are clipped below here (PixelCNN++ code): it
# keeps a bin's mass, and its gradient, finite.
MIN_LOG_SCALE = -7.0
# Below this bin mass the PixelCNN++ code replaces the logistic's bin mass by the
# density at the bin centre times the bin width (`exact=False` below).
MIN_BIN_PROB = 1e-5


# ----------------------------------------------------------------- KL divergences
def gaussian_kl(mean1: jax.Array, log_var1: jax.Array, mean2: jax.Array,
                log_var2: jax.Array) -> jax.Array:
  """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) in nats, elementwise.

  0.5 (log var2 - log var1 + var1 / var2 + (mean1 - mean2)^2 / var2 - 1): the
  L_{t-1} terms of Ho et al. 2020 eq. 5 (its normal_kl) and the per-layer KLs of
  a hierarchical VAE (Child 2021, eq. 1). Exactly 0 when the two are equal.
  """
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def gaussian_kl_to_standard_normal(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, 1)) in nats, elementwise.

  0.5 (mean^2 + var - 1 - log var): Kingma & Welling 2014, appendix B (their
  -D_KL, eq. 10), the closed-form KL of a VAE's posterior to its prior.
  """
  return 0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0) - 0.5 * log_var


# ------------------------------------------------------- discretized Gaussian
def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """The tanh approximation of Phi(x) of the DDPM code (max error ~2e-4)."""
  return 0.5 * (1.0 + jnp.tanh(
      math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


def standard_normal_cdf(x: jax.Array) -> jax.Array:
  """The exact Phi(x)."""
  return ndtr(x)


def _log_normal_mass(lower: jax.Array, upper: jax.Array) -> jax.Array:
  """log(Phi(upper) - Phi(lower)) for lower < upper, accurate in both tails.

  Works in the lower tail, reflecting the interval when it lies mostly above
  0, so that the difference never cancels two numbers close to 1.
  """
  reflect = lower + upper > 0
  lo = jnp.where(reflect, -upper, lower)
  hi = jnp.where(reflect, -lower, upper)
  log_hi = log_ndtr(hi)
  # log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - Phi(lo)/Phi(hi)); the cap
  # keeps a float32 tie (an interval far out in a tail) finite.
  log_ratio = jnp.minimum(log_ndtr(lo) - log_hi, -1e-30)
  return log_hi + jnp.log(-jnp.expm1(log_ratio))


def discretized_gaussian_log_likelihood(
    x: jax.Array,
    *,
    means: jax.Array,
    log_scales: jax.Array,
    exact_cdf: bool = True,
) -> jax.Array:
  """log P(x) of a level x in [-1, 1] under the discretized Gaussian, elementwise.

  Ho et al. 2020 eq. 13 (the decoder L_0 = -log p(x_0 | x_1)): the mass of
  N(means, exp(log_scales)^2) over x's bin (module docstring).

  exact_cdf=True (default) uses the exact normal CDF in log space, which
  stays accurate when a bin is far in a tail. exact_cdf=False reproduces the
  DDPM code: tanh CDF approximation and masses floored at 1e-12; the two
  agree to about 1e-3 nats per sub-pixel in ordinary cases.
  """
  centered = x - means
  inv_scale = jnp.exp(-log_scales)
  upper = inv_scale * (centered + HALF_BIN)
  lower = inv_scale * (centered - HALF_BIN)
  if exact_cdf:
    log_cdf_upper = log_ndtr(upper)
    log_survival_lower = log_ndtr(-lower)
    log_bin_mass = _log_normal_mass(lower, upper)
  else:
    cdf_upper = approx_standard_normal_cdf(upper)
    cdf_lower = approx_standard_normal_cdf(lower)
    log_cdf_upper = jnp.log(jnp.maximum(cdf_upper, 1e-12))
    log_survival_lower = jnp.log(jnp.maximum(1.0 - cdf_lower, 1e-12))
    log_bin_mass = jnp.log(jnp.maximum(cdf_upper - cdf_lower, 1e-12))
  return jnp.where(
      x < -EDGE, log_cdf_upper,
      jnp.where(x > EDGE, log_survival_lower, log_bin_mass))


# ------------------------------------------------------- discretized logistic
def discretized_logistic_log_likelihood(
    x: jax.Array,
    *,
    mean: jax.Array,
    log_scale: jax.Array,
    exact: bool = True,
) -> jax.Array:
  """log P(x) of a level x in [-1, 1] under the discretized logistic, elementwise.

  The mass of Logistic(mean, exp(log_scale)) over x's bin (module docstring):
  sigma(u) - sigma(l) with u, l = (x -+ 1/255 - mean) / s, one component of
  Salimans et al. 2017 eq. 2 (Kingma et al. 2016 for a single logistic).
  Callers clip log_scale below at MIN_LOG_SCALE.

  exact=True (default) writes sigma(u) - sigma(l) = sigma(u) sigma(-l)
  (1 - exp(l - u)), which never cancels two close numbers, so it stays accurate
  far in both tails. exact=False reproduces the PixelCNN++ code: the sigmoid
  difference, taken on the side of the mean where both sigmoids are small
  (sigma(z) = 1 - sigma(-z)), and below MIN_BIN_PROB the log-density at the bin
  centre times the bin width 2/255, where float32 sigmoids have no precision
  left (relative error ~(2/255 / s)^2 / 24, the midpoint rule).
  """
  inv_scale = jnp.exp(-log_scale)
  upper = inv_scale * (x - mean + HALF_BIN)
  lower = inv_scale * (x - mean - HALF_BIN)
  log_cdf_upper = jax.nn.log_sigmoid(upper)        # lowest level: log sigma(u)
  log_survival_lower = jax.nn.log_sigmoid(-lower)  # highest level: log(1 - sigma(l))
  if exact:
    log_interior = (log_cdf_upper + log_survival_lower
                    + jnp.log(-jnp.expm1(-(2.0 * HALF_BIN) * inv_scale)))
  else:
    mid = inv_scale * (x - mean)
    above = mid > 0
    bin_mass = (jax.nn.sigmoid(jnp.where(above, -lower, upper))
                - jax.nn.sigmoid(jnp.where(above, -upper, lower)))
    # log pdf of the logistic at the bin centre: z - log s - 2 softplus(z).
    log_pdf_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid)
    # The maximum keeps log finite (and its gradient NaN-free) in the unselected branch.
    log_interior = jnp.where(bin_mass > MIN_BIN_PROB,
                             jnp.log(jnp.maximum(bin_mass, 1e-12)),
                             log_pdf_mid - math.log(127.5))
  return jnp.where(x < -EDGE, log_cdf_upper,
                   jnp.where(x > EDGE, log_survival_lower, log_interior))


# --------------------------------------------------------- discrete variables
def bernoulli_log_likelihood(x: jax.Array, logits: jax.Array) -> jax.Array:
  """log Bernoulli(x; sigmoid(logits)) for x in {0, 1}, elementwise.

  x log sigma(l) + (1 - x) log sigma(-l) = -softplus((1 - 2x) l): no
  cancellation for large |logits| (the sigmoid output of van den Oord et al.
  2016a for binary data; the Bernoulli decoder of Kingma & Welling 2014, app. C.1).
  """
  return -jax.nn.softplus((1.0 - 2.0 * x) * logits)


def categorical_log_likelihood(x: jax.Array, logits: jax.Array) -> jax.Array:
  """log softmax(logits)[x] for integer x, elementwise; logits [..., K] -> [...].

  The 256-way softmax of van den Oord et al. 2016a (sec. 2.2), in float32.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, x.astype(jnp.int32)[..., None], axis=-1)[..., 0]


# ------------------------------------------------------------------- units
def nats_to_bits_per_dim(nats: jax.Array, num_dims: int) -> jax.Array:
  """nats / (num_dims ln 2): a negative log-likelihood in bits per dimension.

  The unit of Theis et al. 2016 and of every table of the papers: D = H W C
  sub-pixels of 256-level data (Ho et al. 2020, appendix; PixelCNN++ sec. 3).
  """
  return nats / (num_dims * math.log(2.0))
