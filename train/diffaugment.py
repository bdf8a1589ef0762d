"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image
the discriminator sees, real and generated, in both the D and the G updates (eq. 4-5).

Policies, as in the reference implementation (applied in the order given, NHWC images
in [-1, 1], one random draw per example):
- 'color': brightness + U(-0.5, 0.5); saturation: (x - channel mean) * U(0, 2) + mean;
  contrast: (x - image mean) * U(0.5, 1.5) + mean;
- 'translation': integer shift by up to 1/8 of the side in each axis, zeros shifted in;
- 'cutout': one square of half the side set to 0, its centre uniform over the image.
Each is a gather or an elementwise product, so gradients flow to the input images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  unknown = [p for p in names if p not in POLICIES]
  if unknown:
    raise ValueError(f"config.gan.diffaugment={policy!r}: unknown {unknown}; use a "
                     f"comma-separated subset of {POLICIES} (or '' for none).")
  return names


def brightness(x: jax.Array, rng: jax.Array) -> jax.Array:
  return x + (jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) - 0.5)


def saturation(x: jax.Array, rng: jax.Array) -> jax.Array:
  mean = jnp.mean(x, axis=3, keepdims=True)
  return (x - mean) * (jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) * 2.0) + mean


def contrast(x: jax.Array, rng: jax.Array) -> jax.Array:
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype) + 0.5) + mean


def translate(x: jax.Array, shifts: jax.Array) -> jax.Array:
  """out[b, i, j] = x[b, i + shifts[b, 0], j + shifts[b, 1]], 0 outside the image."""
  _, h, w, _ = x.shape
  rows = jnp.arange(h)[None, :] + shifts[:, :1]                    # [B, H]
  cols = jnp.arange(w)[None, :] + shifts[:, 1:]                    # [B, W]
  valid = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
  rows, cols = jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)
  gathered = jax.vmap(lambda img, r, c: img[r][:, c])(x, rows, cols)
  return gathered * valid[..., None].astype(x.dtype)


def random_translation(x: jax.Array, rng: jax.Array, ratio: float = 0.125) -> jax.Array:
  _, h, w, _ = x.shape
  max_shift = jnp.array([int(h * ratio + 0.5), int(w * ratio + 0.5)])
  shifts = jax.random.randint(rng, (x.shape[0], 2), -max_shift, max_shift + 1)
  return translate(x, shifts)


def cutout_mask(shape: tuple[int, int, int], offsets: jax.Array,
                size: tuple[int, int]) -> jax.Array:
  """[B, H, W] mask, 0 on the square of `size` starting at offsets - size // 2."""
  b, h, w = shape
  lo = offsets - jnp.array([size[0] // 2, size[1] // 2])
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  in_rows = (rows >= lo[:, :1]) & (rows < lo[:, :1] + size[0])
  in_cols = (cols >= lo[:, 1:]) & (cols < lo[:, 1:] + size[1])
  return 1.0 - (in_rows[:, :, None] & in_cols[:, None, :]).astype(jnp.float32)


def random_cutout(x: jax.Array, rng: jax.Array, ratio: float = 0.5) -> jax.Array:
  b, h, w, _ = x.shape
  size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
  high = jnp.array([h + (1 - size[0] % 2), w + (1 - size[1] % 2)])
  offsets = jax.random.randint(rng, (b, 2), 0, high)
  return x * cutout_mask((b, h, w), offsets, size)[..., None].astype(x.dtype)


def diff_augment(x: jax.Array, rng: jax.Array, policy: tuple[str, ...]) -> jax.Array:
  """Applies the policy's augmentations in order; identity for an empty policy."""
  for i, name in enumerate(policy):
    key = jax.random.fold_in(rng, i)
    if name == "color":
      k1, k2, k3 = jax.random.split(key, 3)
      x = contrast(saturation(brightness(x, k1), k2), k3)
    elif name == "translation":
      x = random_translation(x, key)
    elif name == "cutout":
      x = random_cutout(x, key)
  return x
