"""The GAN family: a generator and a discriminator trained against each other.

TrainState layout (train/state.py):
- params = {'generator', 'discriminator'}; opt_state the same keys;
- ema_params = the generator's exponential moving average only (sampling uses it);
- model_state = {'generator': {...}, 'discriminator': {...}}: the non-trained
  collections of each network ('batch_stats', 'spectral_norm', 'w_avg'), empty when
  a network has none;
- tx = None: the family keeps its two optax optimizers (self.g_tx, self.d_tx).

One `train_step` is one generator update preceded by `config.gan.n_critic`
discriminator updates, all in one compiled call (a lax.scan over the D updates). Each
D update sees a fresh real batch, as in the papers: the loop's batch of
config.training.batch_size images is split into n_critic chunks of
batch_size / n_critic, chunk i = rows i, i + n, i + 2n, ... (so every device keeps its
own rows when the per-device batch is a multiple of n_critic). The generator update
draws config.gan.g_batch_size latents (0: the D chunk size). Order per step: the
n_critic D updates, then the G update. Both learning rates are functions of the
generator step (state.step), as in Gulrajani et al.'s linear decay: all D updates of
one step share one rate. Per-step randomness is fold_in(state.rng, state.step).

Regularisers (config.gan): the gradient penalty of Gulrajani et al. 2017
(gp_weight = lambda, on interpolates of the real chunk and the fakes) and R1
(Mescheder et al. 2018, r1_gamma). r1_every = 1 adds (gamma/2) R1 to every D loss;
r1_every = k > 1 is StyleGAN2's lazy regularisation (Karras et al. 2020, sec. 3.1, and
the official code): every k-th D update is followed by a separate D optimizer step on
(gamma/2) k R1 alone (configs adjust Adam's rate and betas by k/(k+1) as that code
does). DiffAugment (Zhao et al. 2020) augments every image D sees, in D and G updates
and inside the penalties. BigGAN's orthogonal regularisation (ortho_weight) adds to the
G loss.

Inputs: uint8 images are scaled to [-1, 1]; float inputs (the 2-D toy points of
datasets/toy2d.py) are already scaled and used as they are. `sample` returns uint8
images, or for vector data (image_shape (D,), the toy) the raw float points, as the
data are; `generate` is the raw generator output either way. GANs have no likelihood:
no eval_step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from datasets import transforms
from models import gan as gan_models
from models import stylegan2
from sampling import common as sampling_common
from train import contract, diffaugment, gan_losses
from train import optim as optim_lib
from train.state import TrainState, ema_update

ARCHITECTURES = ("dcgan", "sngan_cnn", "resnet", "stylegan2", "mlp")
Z_DISTRIBUTIONS = ("normal", "uniform")
BATCH_NORM_STATS = ("running", "batch")
D_POOLINGS = ("sum", "mean")


def scale_inputs(x: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float inputs (toy points) pass unchanged."""
  if x.dtype == jnp.uint8:
    return transforms.uint8_to_centered(x)
  return x.astype(jnp.float32)


def build_networks(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                   num_classes: int):
  """(generator, discriminator) modules for config.model.architecture."""
  m = config.model
  arch = m.architecture
  if arch not in ARCHITECTURES:
    raise ValueError(f"config.model.architecture={arch!r}; choose one of {ARCHITECTURES}.")
  if arch == "mlp":
    return (gan_models.MLPGenerator(m.mlp_hidden, m.mlp_layers, tuple(image_shape)),
            gan_models.MLPDiscriminator(m.mlp_hidden, m.mlp_layers, m.d_spectral_norm,
                                        m.sn_num_iters))
  if len(image_shape) != 3:
    raise ValueError(f"config.model.architecture={arch!r} needs images [H, W, C], got "
                     f"shape {image_shape}; use 'mlp' for vectors.")
  if image_shape[0] != image_shape[1]:
    raise ValueError(f"GAN architectures need square images, got {image_shape}; set "
                     "config.data.image_size.")
  if num_classes and arch in ("dcgan", "sngan_cnn"):
    raise ValueError(f"config.model.architecture={arch!r} is unconditional; set "
                     "config.model.conditional=False or use 'resnet' / 'stylegan2'.")
  if m.init not in gan_models.INITS:
    raise ValueError(f"config.model.init={m.init!r}; choose one of {gan_models.INITS}.")
  shape = tuple(image_shape)
  if arch == "dcgan":
    return (gan_models.DCGANGenerator(m.ch, tuple(m.ch_mult), shape, m.init),
            gan_models.DCGANDiscriminator(m.d_ch, tuple(m.d_ch_mult), m.init,
                                          m.d_spectral_norm, m.sn_num_iters))
  if arch == "sngan_cnn":
    return (gan_models.SNGANCNNGenerator(m.ch, tuple(m.ch_mult), shape, m.init),
            gan_models.SNGANCNNDiscriminator(m.d_ch, tuple(m.d_ch_mult), m.init,
                                             m.d_spectral_norm, m.sn_num_iters))
  if arch == "resnet":
    if m.d_pooling not in D_POOLINGS:
      raise ValueError(f"config.model.d_pooling={m.d_pooling!r}; choose {D_POOLINGS}.")
    if m.hierarchical_z and num_classes and not m.shared_embedding_dim:
      raise ValueError("config.model.hierarchical_z with classes needs "
                       "config.model.shared_embedding_dim > 0 (BigGAN concatenates the "
                       "shared class embedding with each latent chunk).")
    return (gan_models.ResNetGenerator(
                m.ch, tuple(m.ch_mult), shape, num_classes, m.shared_embedding_dim,
                m.hierarchical_z, m.g_spectral_norm, m.init, m.sn_num_iters),
            gan_models.ResNetDiscriminator(
                m.d_ch, tuple(m.d_ch_mult), tuple(m.d_downsample), num_classes,
                m.d_spectral_norm, m.d_pooling, m.init, m.sn_num_iters))
  g_channels = tuple(m.ch * k for k in m.ch_mult)
  d_channels = tuple(m.d_ch * k for k in m.d_ch_mult)
  if len(d_channels) != len(g_channels):
    raise ValueError("StyleGAN2: config.model.d_ch_mult needs one entry per resolution, "
                     f"like ch_mult: {tuple(m.d_ch_mult)} vs {tuple(m.ch_mult)}.")
  return (stylegan2.StyleGAN2Generator(shape, g_channels, m.w_dim, m.mapping_layers,
                                       num_classes, m.style_mixing_prob),
          stylegan2.StyleGAN2Discriminator(shape, d_channels, num_classes,
                                           m.d_architecture, m.mbstd_group_size,
                                           m.mbstd_num_features, m.d_mapping_layers))


def _player_optim(optim: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
  """config.optim copied field by field, with one player's `changes` (rate, betas...)."""
  player = ml_collections.ConfigDict(dict(
      optimizer=optim.optimizer, learning_rate=optim.learning_rate,
      warmup_steps=optim.warmup_steps, lr_schedule=optim.lr_schedule,
      lr_decay_rate=optim.lr_decay_rate, lr_decay_steps=optim.lr_decay_steps,
      lr_boundaries=optim.lr_boundaries, lr_boundary_scales=optim.lr_boundary_scales,
      beta1=optim.beta1, beta2=optim.beta2, eps=optim.eps,
      weight_decay=optim.weight_decay, rmsprop_decay=optim.rmsprop_decay,
      momentum=optim.momentum, grad_clip_norm=optim.grad_clip_norm,
      ema_decay=optim.ema_decay))
  player.update(changes)
  return player


def _unit_rate_optim(optim: ml_collections.ConfigDict, beta1=None, beta2=None):
  """config.optim with learning rate 1 and no schedule: the family multiplies the
  updates by the scheduled rate of the current generator step."""
  return _player_optim(optim, learning_rate=1.0, lr_schedule="constant", warmup_steps=0,
                       beta1=optim.beta1 if beta1 is None else beta1,
                       beta2=optim.beta2 if beta2 is None else beta2)


class GAN(contract.Family):
  """Generator/discriminator training for every architecture in models/gan.py and
  models/stylegan2.py; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
               num_classes: int):
    self.config = config
    g, m, t, s = config.gan, config.model, config.training, config.sampling
    if g.loss not in gan_losses.LOSSES:
      raise ValueError(f"config.gan.loss={g.loss!r}; choose one of {gan_losses.LOSSES}.")
    if g.n_critic < 1:
      raise ValueError(f"config.gan.n_critic must be >= 1, got {g.n_critic}.")
    if t.batch_size % g.n_critic:
      raise ValueError(
          f"config.training.batch_size={t.batch_size} must be a multiple of "
          f"config.gan.n_critic={g.n_critic}: each of the n_critic discriminator updates "
          f"of a step takes batch_size / n_critic fresh real images. For a per-update "
          f"batch B set batch_size = {g.n_critic} * B.")
    for name, value in (("gp_weight", g.gp_weight), ("r1_gamma", g.r1_gamma),
                        ("ortho_weight", g.ortho_weight), ("g_batch_size", g.g_batch_size),
                        ("ema_start_step", g.ema_start_step),
                        ("ema_half_life_images", g.ema_half_life_images),
                        ("ema_rampup", g.ema_rampup)):
      if value < 0:
        raise ValueError(f"config.gan.{name} must be >= 0, got {value}.")
    if g.r1_every < 1:
      raise ValueError(f"config.gan.r1_every must be >= 1, got {g.r1_every}.")
    if m.z_distribution not in Z_DISTRIBUTIONS:
      raise ValueError(f"config.model.z_distribution={m.z_distribution!r}; choose one of "
                       f"{Z_DISTRIBUTIONS}.")
    if m.z_dim < 1:
      raise ValueError(f"config.model.z_dim must be >= 1, got {m.z_dim}.")
    if s.batch_norm_stats not in BATCH_NORM_STATS:
      raise ValueError(f"config.sampling.batch_norm_stats={s.batch_norm_stats!r}; choose "
                       f"one of {BATCH_NORM_STATS}.")
    if s.truncation < 0:
      raise ValueError(f"config.sampling.truncation must be >= 0 (0: off), got "
                       f"{s.truncation}.")
    if s.truncation and m.z_distribution != "normal":
      raise ValueError("config.sampling.truncation (truncated normal latents) needs "
                       "config.model.z_distribution='normal'.")
    if s.truncation_psi != 1.0 and m.architecture != "stylegan2":
      raise ValueError("config.sampling.truncation_psi is StyleGAN2's truncation; for "
                       f"{m.architecture!r} use config.sampling.truncation.")
    if m.conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes if m.conditional else 0
    self.n_critic = g.n_critic
    self.d_batch = t.batch_size // g.n_critic
    self.g_batch = g.g_batch_size or self.d_batch
    self.policy = diffaugment.parse_policy(g.diffaugment)
    if self.policy and len(self.image_shape) != 3:
      raise ValueError("config.gan.diffaugment augments images; set it to '' for "
                       f"inputs of shape {self.image_shape}.")
    self.is_stylegan = m.architecture == "stylegan2"
    self.generator, self.discriminator = build_networks(config, self.image_shape,
                                                        self.num_classes)
    d_optim = _player_optim(config.optim,
                            learning_rate=g.d_learning_rate or config.optim.learning_rate)
    self.g_schedule = optim_lib.learning_rate_schedule(config.optim)
    self.d_schedule = optim_lib.learning_rate_schedule(d_optim)
    self.g_tx = optim_lib.make_optimizer(_unit_rate_optim(config.optim))
    self.d_tx = optim_lib.make_optimizer(
        _unit_rate_optim(config.optim, g.d_beta1, g.d_beta2))

  # ----------------------------------------------------------------- networks
  def _apply(self, module, params, state, x, labels, rng, *, train: bool,
             keep_state: bool = True, **kwargs):
    """module(x, labels, train) -> (output, new state). In train mode the state's
    collections are mutable; `keep_state=False` discards their new values."""
    variables = {"params": params, **state}
    rngs = {"noise": rng}
    if train and state:
      out, new = module.apply(variables, x, labels, train=True, rngs=rngs,
                              mutable=list(state), **kwargs)
      return out, ({**state, **new} if keep_state else state)
    return module.apply(variables, x, labels, train=train, rngs=rngs, **kwargs), state

  def sample_latents(self, rng: jax.Array, n: int, truncation: float = 0.0) -> jax.Array:
    """z ~ N(0, I) (or U[-1, 1]); truncation > 0 resamples |z_i| > truncation
    (BigGAN's truncation trick, sec. 3.1)."""
    m = self.config.model
    shape = (n, m.z_dim)
    if m.z_distribution == "uniform":
      return jax.random.uniform(rng, shape, jnp.float32, -1.0, 1.0)
    if truncation > 0:
      return jax.random.truncated_normal(rng, -truncation, truncation, shape, jnp.float32)
    return jax.random.normal(rng, shape, jnp.float32)

  def _random_labels(self, rng: jax.Array, n: int):
    if not self.num_classes:
      return None
    return jax.random.randint(rng, (n,), 0, self.num_classes)

  def _labels(self, batch):
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def augment(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    return diffaugment.diff_augment(x, rng, self.policy) if self.policy else x

  # ------------------------------------------------------------------- init
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    g_rng, d_rng, noise_rng, state_rng = jax.random.split(rng, 4)
    x = scale_inputs(example_batch["image"][:1])
    labels = self._labels(example_batch)
    labels = None if labels is None else labels[:1]
    z = jnp.zeros((1, self.config.model.z_dim), jnp.float32)
    g_vars = self.generator.init({"params": g_rng, "noise": noise_rng}, z, labels,
                                 train=False)
    d_vars = self.discriminator.init({"params": d_rng, "noise": noise_rng}, x, labels,
                                     train=False)
    g_params, g_state = g_vars.pop("params"), dict(g_vars)
    d_params, d_state = d_vars.pop("params"), dict(d_vars)
    g_state, d_state = {k: dict(v) for k, v in g_state.items()}, \
        {k: dict(v) for k, v in d_state.items()}
    params = dict(generator=g_params, discriminator=d_params)
    opt_state = dict(generator=self.g_tx.init(g_params),
                     discriminator=self.d_tx.init(d_params))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=g_params,
                      opt_state=opt_state, rng=state_rng,
                      model_state=dict(generator=g_state, discriminator=d_state), tx=None)

  # ------------------------------------------------------------------ training
  def ema_decay(self, step: jax.Array) -> jax.Array:
    """The generator EMA's decay at this step: 0 (a copy) before gan.ema_start_step;
    then optim.ema_decay, or with gan.ema_half_life_images > 0 the StyleGAN2-ADA
    decay 0.5 ** (batch / half_life), half_life = min(half_life, images_seen *
    ema_rampup) when ema_rampup > 0."""
    g = self.config.gan
    step = jnp.asarray(step, jnp.float32)
    if g.ema_half_life_images > 0:
      half_life = jnp.float32(g.ema_half_life_images)
      if g.ema_rampup > 0:
        half_life = jnp.minimum(half_life, step * self.g_batch * g.ema_rampup)
      decay = 0.5 ** (self.g_batch / jnp.maximum(half_life, 1e-8))
    else:
      decay = jnp.float32(self.config.optim.ema_decay)
    return jnp.where(step < g.ema_start_step, 0.0, decay)

  def _split_chunks(self, x: jax.Array) -> jax.Array:
    """[n * B, ...] -> [n, B, ...] with chunk i = rows i, i + n, i + 2n, ..."""
    n = self.n_critic
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

  def _d_fn(self, d_params, d_state, labels, aug_rng, noise_rng):
    """x -> D(augment(x)) logits, train mode, state changes discarded (penalties)."""
    def fn(x):
      return self._apply(self.discriminator, d_params, d_state, self.augment(x, aug_rng),
                         labels, noise_rng, train=True, keep_state=False)[0]
    return fn

  def _d_update(self, step, carry, xs):
    """One discriminator update (plus the lazy R1 step when due)."""
    g_params, lr = step
    d_params, d_opt, g_state, d_state = carry
    real, real_labels, rng, update_index = xs
    c = self.config.gan
    rngs = jax.random.split(rng, 8)
    z = self.sample_latents(rngs[0], real.shape[0])
    fake_labels = self._random_labels(rngs[1], real.shape[0])
    fake, g_state = self._apply(self.generator, g_params, g_state, z, fake_labels,
                                rngs[2], train=True)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params):
      real_logits, state = self._apply(self.discriminator, params, d_state,
                                       self.augment(real, rngs[3]), real_labels,
                                       rngs[7], train=True)
      fake_logits, state = self._apply(self.discriminator, params, state,
                                       self.augment(fake, rngs[4]), fake_labels,
                                       rngs[7], train=True)
      adversarial = gan_losses.discriminator_loss(c.loss, real_logits, fake_logits)
      total, gp, r1 = adversarial, jnp.float32(0.0), jnp.float32(0.0)
      if c.gp_weight > 0:
        gp = gan_losses.gradient_penalty(
            self._d_fn(params, state, real_labels, rngs[5], rngs[7]), real, fake, rngs[6])
        total = total + c.gp_weight * gp
      if c.r1_gamma > 0 and c.r1_every == 1:
        r1 = gan_losses.r1_penalty(
            self._d_fn(params, state, real_labels, rngs[5], rngs[7]), real)
        total = total + 0.5 * c.r1_gamma * r1
      aux = dict(d_adversarial=adversarial, gp=gp, r1=r1, d_real=jnp.mean(real_logits),
                 d_fake=jnp.mean(fake_logits))
      return total, (aux, state)

    (total, (aux, d_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
    d_params, d_opt = optim_lib.gradient_update(self.d_tx, grads, d_params, d_opt, lr)
    r1_applied = jnp.float32(c.r1_gamma > 0 and c.r1_every == 1)
    if c.r1_gamma > 0 and c.r1_every > 1:
      # Lazy R1 (StyleGAN2): a separate step on (gamma / 2) * k * R1 every k updates.
      def regularize(args):
        params, opt = args
        def reg_loss(p):
          r1_value = gan_losses.r1_penalty(
              self._d_fn(p, d_state, real_labels, rngs[5], rngs[7]), real)
          return 0.5 * c.r1_gamma * c.r1_every * r1_value, r1_value
        (_, r1_value), reg_grads = jax.value_and_grad(reg_loss, has_aux=True)(params)
        return optim_lib.gradient_update(self.d_tx, reg_grads, params, opt, lr), r1_value

      due = update_index % c.r1_every == 0
      (d_params, d_opt), r1_value = jax.lax.cond(
          due, regularize, lambda args: (args, jnp.float32(0.0)), (d_params, d_opt))
      aux["r1"] = r1_value
      r1_applied = due.astype(jnp.float32)
    metrics = dict(aux, d_loss_total=total, d_grad_norm=optax.tree.norm(grads),
                   r1_applied=r1_applied)
    return (d_params, d_opt, g_state, d_state), metrics

  def _g_loss(self, g_params, d_params, g_state, d_state, rng):
    c = self.config.gan
    z_rng, y_rng, g_noise, aug_rng, d_noise = jax.random.split(rng, 5)
    z = self.sample_latents(z_rng, self.g_batch)
    labels = self._random_labels(y_rng, self.g_batch)
    fake, g_state = self._apply(self.generator, g_params, g_state, z, labels, g_noise,
                                train=True)
    logits, d_state = self._apply(self.discriminator, d_params, d_state,
                                  self.augment(fake, aug_rng), labels, d_noise, train=True)
    adversarial = gan_losses.generator_loss(c.loss, logits)
    loss = adversarial
    if c.ortho_weight > 0:
      loss = loss + gan_losses.orthogonal_regularization(g_params, c.ortho_weight)
    return loss, (adversarial, g_state, d_state)

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    d_rng, g_rng = jax.random.split(rng)
    g_lr, d_lr = self.g_schedule(state.step), self.d_schedule(state.step)
    real = self._split_chunks(scale_inputs(batch["image"]))
    labels = self._labels(batch)
    labels = None if labels is None else self._split_chunks(labels)
    g_params, d_params = state.params["generator"], state.params["discriminator"]
    g_state, d_state = state.model_state["generator"], state.model_state["discriminator"]
    update_indices = state.step * self.n_critic + jnp.arange(self.n_critic)
    carry = (d_params, state.opt_state["discriminator"], g_state, d_state)
    xs = (real, labels, jax.random.split(d_rng, self.n_critic), update_indices)
    carry, d_metrics = jax.lax.scan(
        lambda c, x: self._d_update((g_params, d_lr), c, x), carry, xs)
    d_params, d_opt, g_state, d_state = carry

    (g_loss, (g_adv, g_state, d_state)), g_grads = jax.value_and_grad(
        self._g_loss, has_aux=True)(g_params, d_params, g_state, d_state, g_rng)
    g_params, g_opt = optim_lib.gradient_update(self.g_tx, g_grads, g_params,
                                                state.opt_state["generator"], g_lr)
    decay = self.ema_decay(state.step)    # the generator's EMA, with its ramp-up
    ema = ema_update(state.ema_params, g_params, decay)

    mean = {k: jnp.mean(v) for k, v in d_metrics.items()}
    applied = jnp.sum(d_metrics["r1_applied"])
    metrics = dict(loss=mean["d_loss_total"], d_loss=mean["d_adversarial"],
                   g_loss=g_adv, d_real=mean["d_real"], d_fake=mean["d_fake"],
                   d_grad_norm=mean["d_grad_norm"], g_grad_norm=optax.tree.norm(g_grads),
                   g_learning_rate=g_lr, d_learning_rate=d_lr, ema_decay=decay)
    if self.config.gan.gp_weight > 0:
      metrics["gradient_penalty"] = mean["gp"]
    if self.config.gan.r1_gamma > 0:
      metrics["r1"] = jnp.sum(d_metrics["r1"]) / jnp.maximum(applied, 1.0)
    if self.config.gan.ortho_weight > 0:
      metrics["g_loss_total"] = g_loss
    new_state = state.replace(
        step=state.step + 1, ema_params=ema,
        params=dict(generator=g_params, discriminator=d_params),
        opt_state=dict(generator=g_opt, discriminator=d_opt),
        model_state=dict(generator=g_state, discriminator=d_state))
    return new_state, metrics

  # ------------------------------------------------------------------ sampling
  def sampling_params(self, state: TrainState, use_ema: bool = True) -> dict[str, Any]:
    """What `sample` needs: the generator's (EMA or raw) params and its model state
    (batch-norm running averages, spectral-norm vectors, w_avg)."""
    params = state.ema_params if use_ema else state.params["generator"]
    return dict(params=params, model_state=state.model_state["generator"])

  def generate(self, params: dict[str, Any], rng: jax.Array, num_samples: int) -> jax.Array:
    """Raw generator outputs [N, *shape] (images in [-1, 1]; toy points as they are).
    Conditional models cycle through the classes."""
    s = self.config.sampling
    z_rng, noise_rng = jax.random.split(rng)
    z = self.sample_latents(z_rng, num_samples, s.truncation)
    labels = sampling_common.cycled_labels(num_samples, self.num_classes)
    kwargs = {}
    if self.is_stylegan:
      kwargs = dict(truncation_psi=float(s.truncation_psi))
    batch_stats = s.batch_norm_stats == "batch" and not self.is_stylegan
    out, _ = self._apply(self.generator, params["params"], params["model_state"], z,
                         labels, noise_rng, train=batch_stats, keep_state=False, **kwargs)
    return out

  def sample(self, params: dict[str, Any], rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples from `sampling_params(state)`; vector data (the 2-D toy):
    float32 [N, D] points, unscaled like the inputs."""
    out = self.generate(params, rng, num_samples)
    return out if len(self.image_shape) == 1 else transforms.centered_to_uint8(out)

  def sampler_settings(self) -> dict[str, Any]:
    s, m = self.config.sampling, self.config.model
    settings = dict(sampler="generator", nfe=1, use_ema=s.use_ema,
                    architecture=m.architecture, z_dim=m.z_dim,
                    z_distribution=m.z_distribution, batch_norm_stats=s.batch_norm_stats)
    if s.truncation:
      settings["truncation"] = s.truncation
    if self.is_stylegan:
      settings["truncation_psi"] = s.truncation_psi
    return settings
