"""The DDPM family (Ho et al. 2020): L_simple training, ancestral/DDIM sampling, VLB.

A family is a small object of pure functions that the one training loop calls:
`init`, `train_step`, `eval_step`, `sample`. Nothing here touches files or devices.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from evaluation import likelihood
from models import diffusion as diffusion_lib
from models import unet
from sampling import ddpm as ddpm_sampling
from train import optim as optim_lib
from train.state import TrainState, ema_update

VAR_TYPES = ("fixedlarge", "fixedsmall")
SAMPLERS = ("ancestral", "ddim")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def scale_images(images_uint8: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the data scaling of Ho et al. (section 3.3)."""
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


class DDPM:
  """Denoising diffusion with an epsilon-predicting U-Net."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    self.config = config
    d, m, s = config.diffusion, config.model, config.sampling
    if d.var_type not in VAR_TYPES:
      raise ValueError(f"config.diffusion.var_type={d.var_type!r}; choose {VAR_TYPES}.")
    if s.method not in SAMPLERS:
      raise ValueError(f"config.sampling.method={s.method!r}; choose {SAMPLERS}.")
    if m.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={m.dtype!r}; choose {tuple(DTYPES)}.")
    if m.conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    if s.method == "ddim" and not 1 <= s.ddim_steps <= d.num_timesteps:
      raise ValueError(f"config.sampling.ddim_steps={s.ddim_steps} must be in "
                       f"[1, {d.num_timesteps}].")
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes if m.conditional else 0
    self.model = unet.UNet(
        ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv, out_channels=image_shape[-1],
        num_classes=self.num_classes, num_groups=m.num_groups, dtype=DTYPES[m.dtype])
    betas = diffusion_lib.get_beta_schedule(
        d.beta_schedule, beta_start=d.beta_start, beta_end=d.beta_end,
        num_timesteps=d.num_timesteps)
    self.diffusion = diffusion_lib.GaussianDiffusion.from_betas(betas)
    self.tx = optim_lib.make_optimizer(config.optim)

  # ------------------------------------------------------------------ training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    x = scale_images(example_batch["image"][:1])
    t = jnp.zeros((1,), jnp.int32)
    y = self._labels(example_batch)
    y = None if y is None else y[:1]
    params = self.model.init({"params": rng}, x, t, y, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def _labels(self, batch):
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def eps_fn(self, params, y=None, *, train=False, rng=None):
    """eps_theta(x_t, t) as the samplers and the likelihood want it."""
    rngs = {"dropout": rng} if train else {}
    return lambda x, t: self.model.apply({"params": params}, x, t, y, train=train,
                                         rngs=rngs)

  def loss(self, params, batch, rng):
    """L_simple (Ho et al. eq. 14): E_{t, x0, eps} ||eps - eps_theta(x_t, t)||^2."""
    x0 = scale_images(batch["image"])
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    b = x0.shape[0]
    t = jax.random.randint(t_rng, (b,), 0, self.diffusion.num_timesteps)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    x_t = self.diffusion.q_sample(x0, t, noise)
    eps = self.eps_fn(params, self._labels(batch), train=True, rng=dropout_rng)(x_t, t)
    per_example = jnp.mean(jnp.square(eps.astype(jnp.float32) - noise), axis=(1, 2, 3))
    return jnp.mean(per_example)

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(self.loss)(state.params, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, self.config.optim.ema_decay)
    metrics = dict(loss=loss, grad_norm=optax.global_norm(grads),
                   learning_rate=optim_lib.learning_rate_schedule(self.config.optim)(
                       state.step))
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state)
    return new_state, metrics

  # ---------------------------------------------------------------- evaluation
  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim of the variational bound (all T terms, L_0 and L_T)."""
    out = likelihood.vlb_bpd(
        self.eps_fn(params, self._labels(batch)), self.diffusion, batch["image"], rng,
        var_type=self.config.diffusion.var_type, clip_denoised=False,
        timestep_chunk=self.config.eval.vlb_timestep_chunk)
    return {k: out[k] for k in ("bpd_vlb", "prior_bpd", "decoder_bpd")}

  # ------------------------------------------------------------------ sampling
  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples; conditional models cycle through the classes."""
    s = self.config.sampling
    y = (jnp.arange(num_samples, dtype=jnp.int32) % self.num_classes
         if self.num_classes else None)
    eps_fn = self.eps_fn(params, y)
    shape = (num_samples, *self.image_shape)
    if s.method == "ancestral":
      out = ddpm_sampling.ancestral_sample(
          eps_fn, self.diffusion, rng, shape, var_type=self.config.diffusion.var_type,
          clip_denoised=s.clip_denoised)
    else:
      out = ddpm_sampling.ddim_sample(
          eps_fn, self.diffusion, rng, shape, num_steps=s.ddim_steps, eta=s.ddim_eta,
          step_spacing=s.ddim_spacing, clip_denoised=s.clip_denoised)
    return ddpm_sampling.to_uint8(out.images)

  def sampler_settings(self) -> dict[str, Any]:
    s, d = self.config.sampling, self.config.diffusion
    settings = dict(sampler=s.method, clip_denoised=s.clip_denoised,
                    num_timesteps=d.num_timesteps, use_ema=s.use_ema)
    if s.method == "ancestral":
      settings.update(var_type=d.var_type, nfe=d.num_timesteps)
    else:
      settings.update(ddim_steps=s.ddim_steps, ddim_eta=s.ddim_eta,
                      ddim_spacing=s.ddim_spacing, nfe=s.ddim_steps)
    return settings
