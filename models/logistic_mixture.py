"""The discretized logistic mixture likelihood of PixelCNN++ (Salimans et al. 2017).

Sections 2.1 (the likelihood) and 2.2 (conditioning on whole pixels).

Each pixel x = (x_1, ..., x_C) of an image scaled to [-1, 1] (256 levels 2/255 apart)
has the distribution (paper eqs. 2-3)

  p(x) = sum_i pi_i prod_c [sigma((x_c + 1/255 - mu_ic) / s_ic)
                            - sigma((x_c - 1/255 - mu_ic) / s_ic)],

with the lowest level's bin extended to -inf and the highest level's to +inf. For RGB
the means of later channels depend linearly on earlier ones within the component
(eq. 3): mu_G = m_G + c_0 x_R, mu_B = m_B + c_1 x_R + c_2 x_G, so a whole pixel is
modelled from one network output without masking inside the pixel.

Parameter layout per pixel, one rule for grey and RGB (the reference code's for RGB),
K = num_output_channels(C, M) = M + C * P * M:
  [0:M]   mixture logits;
  [M:K]   reshaped to [C, P * M]: per channel c, [0:M] means m_c, [M:2M] log-scales
          (clipped below at -7), and, when there are channels to couple (C = 3, so
          P = 3; grey has P = 2), [2M:3M] pre-tanh coupling coefficients (channel 0:
          c_0, 1: c_1, 2: c_2). A grey model carries no unused coupling outputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models import distributions

SUPPORTED_CHANNELS = (1, 3)


def _check_channels(num_channels: int) -> None:
  if num_channels not in SUPPORTED_CHANNELS:
    raise ValueError(
        f"The logistic mixture likelihood models images with C in {SUPPORTED_CHANNELS} "
        f"channels (grey or RGB), got C={num_channels}.")


def _check_num_mixtures(num_mixtures: int) -> None:
  if num_mixtures < 1:
    raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}.")


def num_output_channels(num_channels: int, num_mixtures: int) -> int:
  """Outputs per pixel: RGB 10 M (pi, 3 means, 3 log-scales, 3 coeffs); C=1: 3 M."""
  _check_channels(num_channels)
  _check_num_mixtures(num_mixtures)
  return num_mixtures * (10 if num_channels == 3 else 3)


def _num_channels_from_params(num_params: int, num_mixtures: int) -> int:
  _check_num_mixtures(num_mixtures)
  for channels in SUPPORTED_CHANNELS:
    if num_params == num_output_channels(channels, num_mixtures):
      return channels
  raise ValueError(
      f"params have {num_params} channels, which fits neither C=1 ({3 * num_mixtures}) "
      f"nor C=3 ({10 * num_mixtures}) with num_mixtures={num_mixtures}.")


def _unpack(params: jax.Array, num_channels: int, num_mixtures: int):
  """[..., K] -> logits [..., M], means and log-scales [..., C, M], coeffs [..., 3, M].

  coeffs (tanh of the raw values) is None for C = 1.
  """
  m = num_mixtures
  logits = params[..., :m]
  per_channel = params[..., m:].reshape(*params.shape[:-1], num_channels, -1)
  means = per_channel[..., :m]
  log_scales = jnp.maximum(per_channel[..., m:2 * m], distributions.MIN_LOG_SCALE)
  coeffs = jnp.tanh(per_channel[..., 2 * m:3 * m]) if num_channels == 3 else None
  return logits, means, log_scales, coeffs


def _check_log_prob_inputs(x: jax.Array, params: jax.Array, num_mixtures: int) -> None:
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
  _check_channels(x.shape[-1])
  expected = num_output_channels(x.shape[-1], num_mixtures)
  if params.shape != (*x.shape[:-1], expected):
    raise ValueError(
        f"params must have shape {(*x.shape[:-1], expected)} for x of shape {x.shape} "
        f"and num_mixtures={num_mixtures}, got {params.shape}.")


def pixel_log_prob(x: jax.Array, params: jax.Array, *, num_mixtures: int) -> jax.Array:
  """Log-likelihood in nats of every pixel [B, H, W] of x [B, H, W, C] in [-1, 1].

  params [B, H, W, K] are the network outputs for every pixel (layout in the module
  docstring). A pixel's value covers all its C channels (eq. 3 couples them).
  """
  _check_log_prob_inputs(x, params, num_mixtures)
  num_channels = x.shape[-1]
  x = x.astype(jnp.float32)
  logits, means, log_scales, coeffs = _unpack(params.astype(jnp.float32), num_channels,
                                              num_mixtures)
  x_c = x[..., None]  # [B, H, W, C, 1] against the M components
  if num_channels == 3:
    # Eq. 3: the G and B means move linearly with the observed R (and G) values.
    mean_g = means[..., 1, :] + coeffs[..., 0, :] * x_c[..., 0, :]
    mean_b = (means[..., 2, :] + coeffs[..., 1, :] * x_c[..., 0, :]
              + coeffs[..., 2, :] * x_c[..., 1, :])
    means = jnp.stack([means[..., 0, :], mean_g, mean_b], axis=-2)
  # Each component's channels: one discretized logistic each, as in the reference
  # code (its float32 sigmoid differences, the bin-centre density below 1e-5).
  log_mass = jnp.sum(distributions.discretized_logistic_log_likelihood(
      x_c, mean=means, log_scale=log_scales, exact=False), axis=-2)  # [B, H, W, M]
  return jax.nn.logsumexp(log_mass + jax.nn.log_softmax(logits, axis=-1), axis=-1)


def log_prob(x: jax.Array, params: jax.Array, *, num_mixtures: int) -> jax.Array:
  """Per-example log-likelihood in nats [B]: `pixel_log_prob` summed over the pixels.

  Bits/dim: -log_prob / (H * W * C * ln 2).
  """
  return jnp.sum(pixel_log_prob(x, params, num_mixtures=num_mixtures), axis=(1, 2))


def _quantize(x: jax.Array) -> jax.Array:
  """Clip to [-1, 1] and round to the nearest of the 256 levels k / 127.5 - 1.

  Rounding a logistic draw is an exact draw from the discretized logistic: level k's
  bin is [x_k - 1/255, x_k + 1/255], the end levels' bins reach to -inf and +inf.
  """
  return jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


def sample(rng: jax.Array, params: jax.Array, *, num_mixtures: int) -> jax.Array:
  """Draws whole pixels x [B, H, W, C] in [-1, 1], on the 256-level grid, from params.

  One mixture component per pixel (Gumbel-max), then the channels in order R, G, B,
  each a rounded logistic draw whose mean is shifted by the already drawn (rounded)
  earlier channels as in eq. 3, so that samples follow exactly the distribution that
  log_prob scores.
  """
  if params.ndim != 4:
    raise ValueError(f"params must be [B, H, W, K], got shape {params.shape}.")
  num_channels = _num_channels_from_params(params.shape[-1], num_mixtures)
  logits, means, log_scales, coeffs = _unpack(params.astype(jnp.float32), num_channels,
                                              num_mixtures)
  rng_component, rng_logistic = jax.random.split(rng)
  gumbel = jax.random.gumbel(rng_component, logits.shape, jnp.float32)
  component = jnp.argmax(logits + gumbel, axis=-1)
  pick = lambda a: jnp.take_along_axis(  # noqa: E731  [..., C, M] -> [..., C]
      a, component[..., None, None], axis=-1)[..., 0]
  means, scales = pick(means), jnp.exp(pick(log_scales))
  noise = jax.random.logistic(rng_logistic, means.shape, jnp.float32)
  red = _quantize(means[..., 0] + scales[..., 0] * noise[..., 0])
  if num_channels == 1:
    return red[..., None]
  coeffs = pick(coeffs)
  green = _quantize(means[..., 1] + coeffs[..., 0] * red + scales[..., 1] * noise[..., 1])
  blue = _quantize(means[..., 2] + coeffs[..., 1] * red + coeffs[..., 2] * green
                   + scales[..., 2] * noise[..., 2])
  return jnp.stack([red, green, blue], axis=-1)
