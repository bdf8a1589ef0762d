"""Optimizers, learning-rate schedules and the one gradient step, shared by every family.

A family computes a loss and its gradients; `apply_gradients` does the rest of a
step for every family with one optimizer (clipping, update skipping, the optimizer,
EMA, the standard metrics). A GAN calls `gradient_update` once per player.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from train.state import TrainState, ema_update

OPTIMIZERS = ("adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "exponential", "piecewise", "cosine", "linear")


def _decay_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
  """The schedule that follows the warm-up, counted from the end of the warm-up."""
  lr = optim.learning_rate
  name = optim.lr_schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "exponential":    # lr * rate**step (PixelCNN++: rate 0.999995 per step)
    if not 0.0 < optim.lr_decay_rate <= 1.0:
      raise ValueError("config.optim.lr_decay_rate must be in (0, 1] for "
                       f"lr_schedule='exponential', got {optim.lr_decay_rate}.")
    # exp(step * log(rate)) with log(rate) taken in float64: rate**step in float32
    # would round the rate itself (0.999995 -> 1 - 5.007e-6) and be 0.14% low by step 200k.
    log_rate = math.log(optim.lr_decay_rate)
    return lambda step: lr * jnp.exp(jnp.asarray(step, jnp.float32) * log_rate)
  if name == "piecewise":      # from step b_i on, lr times the product of scales s_1..s_i
    boundaries, scales = tuple(optim.lr_boundaries), tuple(optim.lr_boundary_scales)
    if len(boundaries) != len(scales) or not boundaries:
      raise ValueError("lr_schedule='piecewise' needs config.optim.lr_boundaries and "
                       "config.optim.lr_boundary_scales of the same non-zero length, got "
                       f"{boundaries} and {scales}.")
    if list(boundaries) != sorted(set(boundaries)) or boundaries[0] <= 0:
      raise ValueError("config.optim.lr_boundaries must be strictly increasing positive "
                       f"steps, got {boundaries}.")
    if any(s <= 0 for s in scales):
      raise ValueError(f"config.optim.lr_boundary_scales must be > 0, got {scales}.")
    return optax.piecewise_constant_schedule(lr, dict(zip(boundaries, scales)))
  if optim.lr_decay_steps <= 0:
    raise ValueError(f"lr_schedule={name!r} decays to 0 over config.optim.lr_decay_steps "
                     f"steps after the warm-up; set it > 0 (got {optim.lr_decay_steps}).")
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, optim.lr_decay_steps)
  return optax.linear_schedule(lr, 0.0, optim.lr_decay_steps)   # "linear"


def learning_rate_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_steps`, then `lr_schedule` from `learning_rate`."""
  if optim.lr_schedule not in SCHEDULES:
    raise ValueError(f"config.optim.lr_schedule={optim.lr_schedule!r}; choose one of "
                     f"{SCHEDULES}.")
  decay = _decay_schedule(optim)
  if optim.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps)
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  if optim.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optim.optimizer={optim.optimizer!r}; choose one of "
                     f"{OPTIMIZERS}.")
  if optim.learning_rate <= 0:
    raise ValueError(f"config.optim.learning_rate must be > 0, got {optim.learning_rate}.")
  if not 0.0 <= optim.ema_decay < 1.0:
    raise ValueError(f"config.optim.ema_decay must be in [0, 1), got {optim.ema_decay}.")
  lr = learning_rate_schedule(optim)
  if optim.optimizer == "adam":
    opt = optax.adam(lr, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
  elif optim.optimizer == "adamw":
    opt = optax.adamw(lr, b1=optim.beta1, b2=optim.beta2, eps=optim.eps,
                      weight_decay=optim.weight_decay)
  else:
    if not 0.0 <= optim.rmsprop_decay < 1.0:
      raise ValueError("config.optim.rmsprop_decay must be in [0, 1), got "
                       f"{optim.rmsprop_decay}.")
    opt = optax.rmsprop(lr, decay=optim.rmsprop_decay, eps=optim.eps,
                        momentum=optim.momentum or None)
  if optim.grad_clip_norm and optim.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
  return opt


def clip_by_global_norm(grads: Any, grad_norm: jax.Array, max_norm: float) -> Any:
  """grads * min(1, max_norm / norm): the global norm of the result is <= max_norm.

  For clipping outside the optimizer, where the norm is needed anyway (VDVAE).
  """
  scale = jnp.minimum(1.0, max_norm / (grad_norm + 1e-6))
  return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def should_skip(loss: jax.Array, grad_norm: jax.Array, threshold: float) -> jax.Array:
  """Skip an update whose loss or gradient norm is not finite, or whose norm is too big.

  threshold <= 0 turns the norm test off (non-finite values still skip).
  """
  bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
  if threshold > 0:
    bad = bad | (grad_norm >= threshold)
  return bad


def gradient_update(tx: optax.GradientTransformation, grads: Any, params: Any,
                    opt_state: Any, lr_scale: jax.Array | None = None) -> tuple[Any, Any]:
  """(params, opt_state) after one step of `tx`; updates times lr_scale if given
  (an optimizer built with unit rate and a schedule applied outside, as a GAN's)."""
  updates, opt_state = tx.update(grads, opt_state, params)
  if lr_scale is not None:
    updates = jax.tree.map(lambda u: lr_scale * u, updates)
  return optax.apply_updates(params, updates), opt_state


def apply_gradients(state: TrainState, grads: Any, optim: ml_collections.ConfigDict, *,
                    loss: jax.Array | None = None, clip_norm: float = 0.0,
                    skip_threshold: float | None = None) -> tuple[TrainState, dict]:
  """One step of `state.tx` from `grads`: the state at step + 1 and standard metrics.

  clip_norm > 0 rescales grads to that global norm first (`clip_by_global_norm`;
  clipping inside the optimizer is config.optim.grad_clip_norm). skip_threshold not
  None skips the update (params, optimizer state and EMA unchanged, the step still
  counted) when `should_skip(loss, ...)`; only one branch runs, so a skipped step never
  computes NaN updates. Metrics: grad_norm (before clipping), learning_rate at this
  step, 'loss' when given, 'skipped' when skipping is on.
  """
  grad_norm = optax.tree.norm(grads)

  def update(_):
    clipped = clip_by_global_norm(grads, grad_norm, clip_norm) if clip_norm > 0 else grads
    params, opt_state = gradient_update(state.tx, clipped, state.params, state.opt_state)
    return params, opt_state, ema_update(state.ema_params, params, optim.ema_decay)

  metrics = {} if loss is None else dict(loss=loss)
  if skip_threshold is None:
    params, opt_state, ema = update(None)
  else:
    if loss is None:
      raise ValueError("Update skipping needs the loss (it skips non-finite losses).")
    skip = should_skip(loss, grad_norm, skip_threshold)
    keep = lambda _: (state.params, state.opt_state, state.ema_params)  # noqa: E731
    params, opt_state, ema = jax.lax.cond(skip, keep, update, None)
    metrics["skipped"] = skip.astype(jnp.float32)
  metrics.update(grad_norm=grad_norm,
                 learning_rate=learning_rate_schedule(optim)(state.step))
  return state.replace(step=state.step + 1, params=params, ema_params=ema,
                       opt_state=opt_state), metrics
