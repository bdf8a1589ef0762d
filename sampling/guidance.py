"""Classifier-free guidance (Ho & Salimans 2022) as pure functions.

One network is trained both conditionally and unconditionally by replacing the
condition with a null condition at rate p_uncond (`drop_labels`, Algorithm 1).
At sampling time its two predictions are combined (eq. 6):

    eps_hat(x, c) = (1 + w) eps(x, c) - w eps(x, null).

The combination is affine with weights summing to 1, so the same formula guides
any output that is an affine function of the score with condition-independent
coefficients: eps = -sigma score, a score itself, a denoiser
D = x + sigma^2 score, or an x_0 prediction. `classifier_free_guidance` therefore
serves the DDPM samplers (eps_fn(x, t)), the SDE samplers (score_fn(x, t)) and the
EDM samplers (denoiser_fn(x, sigma)) alike.

A condition is any pytree of arrays with a leading batch axis: class labels [B]
(null = the index num_classes, the U-Net's extra embedding row) or caption
tokens [B, L] (null = every position padding).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

# model_fn(x [B, ...], t [B], cond) -> prediction [B, ...].
ConditionalModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

CONDITION_KINDS = ('none', 'class', 'caption')


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """What a model is conditioned on and how it is guided; one object for every family.

  kind: 'none', 'class' (labels [B] in [0, num_classes)) or 'caption' (tokens [B, L]).
  null_value: the id of the null condition (class models: num_classes, the extra
    embedding row; caption models: the padding id).
  p_uncond: the rate at which training replaces the condition by the null one
    (Ho & Salimans Algorithm 1); guidance_weight: w of eq. 6 at sampling time.
  """

  kind: str = 'none'
  num_classes: int = 0
  null_value: int = 0
  p_uncond: float = 0.0
  guidance_weight: float = 0.0

  def __post_init__(self):
    if self.kind not in CONDITION_KINDS:
      raise ValueError(f'Conditioning kind {self.kind!r}; choose one of {CONDITION_KINDS}.')
    if not 0.0 <= self.p_uncond <= 1.0:
      raise ValueError(f'config.guidance.p_uncond={self.p_uncond} must be in [0, 1].')
    if not self.guidance_weight >= 0.0:
      raise ValueError(f'config.guidance.weight={self.guidance_weight} must be >= 0 (0 = '
                       'the plain conditional sampler).')
    if (self.p_uncond > 0 or self.guidance_weight > 0) and self.kind == 'none':
      raise ValueError('config.guidance needs a conditional model: set '
                       'config.model.conditional=True (class labels) or '
                       'config.text.enabled=True (shapes captions).')
    if self.kind == 'class' and self.num_classes <= 0:
      raise ValueError('A class-conditional model needs a dataset with class labels.')

  @property
  def is_conditional(self) -> bool:
    return self.kind != 'none'

  @property
  def guided(self) -> bool:
    """Whether sampling combines two predictions (eq. 6 with w > 0)."""
    return self.is_conditional and self.guidance_weight > 0

  def drop(self, condition: Any, rng: jax.Array) -> Any:
    """Training's condition: replaced by the null one at rate p_uncond (Algorithm 1)."""
    if condition is None or self.p_uncond <= 0:
      return condition
    return drop_labels(condition, rng, self.p_uncond, self.null_value)

  def check(self, condition: Any) -> None:
    """A condition must be given to a conditional model and only to one."""
    if self.is_conditional and condition is None:
      what = 'caption tokens' if self.kind == 'caption' else 'labels'
      raise ValueError(f'This model is conditional: pass {what} (the null condition '
                       f'{self.null_value} for the unconditional model).')
    if not self.is_conditional and condition is not None:
      raise ValueError('This model is unconditional: pass no condition.')

  def guide(self, model_fn: ConditionalModelFn, condition: Any,
            guidance_weight: float | jax.Array | None = None, *,
            num_guided_channels: int | None = None) -> ModelFn:
    """(x, t) -> the prediction at `condition`, guided with w (eq. 6).

    w defaults to guidance_weight; a Python 0 gives the plain conditional function
    (one network call); unconditional models take condition None.
    """
    self.check(condition)
    w = self.guidance_weight if guidance_weight is None else guidance_weight
    if condition is None or (isinstance(w, (int, float)) and w == 0):
      return lambda x, t: model_fn(x, t, condition)
    return classifier_free_guidance(
        model_fn, condition, null_condition_like(condition, self.null_value), w,
        num_guided_channels=num_guided_channels)


def combine_guidance(cond_out: jax.Array, uncond_out: jax.Array,
                     guidance_weight: float | jax.Array) -> jax.Array:
  """(1 + w) cond_out - w uncond_out (Ho & Salimans 2022, eq. 6)."""
  return (1.0 + guidance_weight) * cond_out - guidance_weight * uncond_out


def null_condition_like(cond: Any, null_value: int) -> Any:
  """The null condition with the structure, shapes and dtypes of `cond`."""
  return jax.tree.map(lambda c: jnp.full_like(c, null_value), cond)


def _check_weight(guidance_weight: Any) -> None:
  if isinstance(guidance_weight, (int, float)) and not guidance_weight >= 0.0:
    raise ValueError(
        f'guidance_weight must be >= 0 (0 = purely conditional), got '
        f'{guidance_weight}.')


def classifier_free_guidance(
    model_fn: ConditionalModelFn,
    cond: Any,
    null_cond: Any,
    guidance_weight: float | jax.Array,
    *,
    num_guided_channels: int | None = None,
) -> ModelFn:
  """The guided (x, t) -> prediction, for any sampler that takes eps/score/denoiser.

  Both predictions come from ONE network call on the batch [x; x] with
  conditions [cond; null_cond] (size 2B), then eq. 6 combines the halves.
  A Python guidance_weight of exactly 0 skips the unconditional half, so the
  guided sampler is then the conditional sampler, bit for bit (and half the cost).
  A traced weight always takes the 2B path.

  Args:
    model_fn: model_fn(x, t, cond); t is [B] (or a scalar, broadcast to [B]).
    cond: the condition, a pytree of [B, ...] arrays.
    null_cond: the null condition, same structure and shapes as `cond`
      (`null_condition_like(cond, null_value)`).
    guidance_weight: w >= 0 of eq. 6.
    num_guided_channels: guide only the first this many channels (last axis)
      and take the rest from the conditional output: for a learned-variance
      network whose output is [eps, v] (2C channels) pass C, so that eps is
      guided and v stays the conditional one (as GLIDE's sampler does,
      Nichol et al. 2022). None guides every channel.
  """
  _check_weight(guidance_weight)
  if num_guided_channels is not None and (
      not isinstance(num_guided_channels, int) or num_guided_channels < 1):
    raise ValueError('num_guided_channels must be a positive integer or None, '
                     f'got {num_guided_channels!r}.')
  cond_shapes = jax.tree.map(jnp.shape, cond)
  null_shapes = jax.tree.map(jnp.shape, null_cond)
  if cond_shapes != null_shapes:
    raise ValueError(
        f'null_cond must have the shapes of cond: {null_shapes} != {cond_shapes}; '
        'build it with null_condition_like(cond, null_value).')

  if isinstance(guidance_weight, (int, float)) and guidance_weight == 0:
    return lambda x, t: model_fn(x, t, cond)

  def guided_fn(x: jax.Array, t: jax.Array) -> jax.Array:
    batch = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    both = model_fn(
        jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0),
        jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond,
                     null_cond))
    cond_out, uncond_out = both[:batch], both[batch:]
    if num_guided_channels is None:
      return combine_guidance(cond_out, uncond_out, guidance_weight)
    guided = combine_guidance(cond_out[..., :num_guided_channels],
                              uncond_out[..., :num_guided_channels],
                              guidance_weight)
    return jnp.concatenate([guided, cond_out[..., num_guided_channels:]], axis=-1)

  return guided_fn


def drop_labels(labels: jax.Array, rng: jax.Array, drop_prob: float,
                null_index: int) -> jax.Array:
  """Replaces whole examples' conditions by the null value with prob. drop_prob.

  Training of Ho & Salimans (Algorithm 1, p_uncond): class labels [B] become
  null_index (= num_classes, the U-Net's null row); token arrays [B, L] lose
  every position of a dropped example (null_index = the padding id), so a
  dropped caption is exactly the null caption. One Bernoulli draw per example.
  """
  drop_prob = float(drop_prob)
  if not 0.0 <= drop_prob <= 1.0:
    raise ValueError(f'drop_prob (p_uncond) must be in [0, 1], got {drop_prob}.')
  labels = jnp.asarray(labels)
  if labels.ndim < 1:
    raise ValueError(
        f'labels must have a batch axis [B, ...], got shape {labels.shape}.')
  drop = jax.random.bernoulli(rng, drop_prob, (labels.shape[0],))
  drop = drop.reshape((-1,) + (1,) * (labels.ndim - 1))
  return jnp.where(drop, jnp.asarray(null_index, labels.dtype), labels)
