"""Optimizers built from `config.optim`, shared by every family."""

import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw")


def learning_rate_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then constant."""
  if optim.warmup_steps <= 0:
    return optax.constant_schedule(optim.learning_rate)
  return optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps)


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
  else:
    opt = optax.adamw(lr, b1=optim.beta1, b2=optim.beta2, eps=optim.eps,
                      weight_decay=optim.weight_decay)
  if optim.grad_clip_norm and optim.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
  return opt
