"""Optimizers and learning-rate schedules built from `config.optim`, shared by every family."""

import math

import jax.numpy as jnp
import ml_collections
import optax

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
