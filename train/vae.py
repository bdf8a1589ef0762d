"""The VAE family (Kingma & Welling 2014): beta-VAE, KL warm-up, free bits, IWAE evaluation.

Model: p(z) = N(0, I), q(z|x) = N(mean(x), diag(std(x))^2) from an encoder
(models/vae.py), and a decoder p(x|z) over the data's sub-pixels, one of
- 'bernoulli': binarized data (x in {0, 1}), one logit per pixel;
- 'gaussian': N(mean, scale^2) discretized to the 256 bins of 8-bit data (Ho et al.
  2020, eq. 13), the scale learned per sub-pixel or fixed (model.learned_scale);
- 'discretized_logistic': one logistic per sub-pixel discretized the same way
  (Kingma et al. 2016; Salimans et al. 2017 with a single component), learned scale;
- 'logistic_mixture': PixelCNN++'s mixture of model.num_mixtures discretized logistics
  per pixel (models/logistic_mixture.py; C = 1 or 3), always sampled, never averaged.
The discretized decoders are distributions over the 256 values, so their bits/dim are
those of a proper discrete likelihood, comparable with other families.

Training minimises, per example and in bits per dimension,
  -E_q[log p(x|z)] + beta_t * sum_j max(free_bits, mean_batch KL_j)
with one reparameterized sample (K&W eq. 10), beta_t = beta * min(1, step / kl_warmup_steps)
(KL warm-up: Bowman et al. 2016, Sonderby et al. 2016) and free bits per latent
dimension (Kingma et al. 2016, appendix C). model.train_samples = k > 1 trains the IWAE
bound L_k instead (Burda et al. 2016, eq. 8), which has neither beta nor free bits.

Binarization for the Bernoulli decoder (model.binarization), applied inside the family:
- 'dynamic': each step draws x ~ Bernoulli(pixel / 255) with that step's rng; eval
  draws the test set once from the eval rng, which is fixed by config.seed;
- 'threshold': static, x = [pixel >= 128];
- 'binary': data already binary, x = [pixel > 0] (tfds 'binarized_mnist' stores 0/1).

Samples (sample(), decode_images()) are uint8 images of the decoder's mean when
config.sampling.decoder_output='mean' (Bernoulli: round(255 p), the probability image)
or of a draw from p(x|z) when 'sample' (Bernoulli: 255 * x, x ~ Bernoulli(p)).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from datasets import transforms
from evaluation import iwae as iwae_lib
from models import distributions
from models import logistic_mixture
from models import vae as vae_models
from train import contract
from train import optim as optim_lib
from train.state import TrainState

DECODERS = ("bernoulli", "gaussian", "discretized_logistic", "logistic_mixture")
DECODER_OUTPUTS = ("mean", "sample")


# ------------------------------------------------------------------- KL weighting
def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
  """beta * min(1, step / warmup_steps): linear KL warm-up from 0 (beta when no warm-up)."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def free_bits_kl(kl_per_dim: jax.Array, free_bits: float) -> jax.Array:
  """sum_j max(free_bits, mean over the batch of KL_j): Kingma et al. 2016, app. C.

  kl_per_dim: [B, D] in nats. A latent dimension whose average KL is below
  `free_bits` nats costs a constant, so the optimiser has no reason to collapse it.
  With free_bits = 0 this is the batch mean of the summed KL.
  """
  return jnp.sum(jnp.maximum(free_bits, jnp.mean(kl_per_dim, axis=0)))


class VAE(contract.Family):
  """A Gaussian-latent VAE with a choice of decoder; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    del num_classes   # unconditional
    self.config = config
    m, ev = config.model, config.eval
    self.image_shape = tuple(image_shape)
    self.num_dims = math.prod(self.image_shape)
    if m.decoder not in DECODERS:
      raise ValueError(f"config.model.decoder={m.decoder!r}; choose one of {DECODERS}.")
    if m.decoder == "bernoulli" and m.binarization not in transforms.BINARIZATIONS:
      raise ValueError(f"config.model.binarization={m.binarization!r}; choose one of "
                       f"{transforms.BINARIZATIONS}.")
    if m.architecture not in vae_models.ARCHITECTURES:
      raise ValueError(f"config.model.architecture={m.architecture!r}; choose one of "
                       f"{vae_models.ARCHITECTURES}.")
    if m.architecture == "conv":
      factor = 2 ** len(m.ch_mult)
      if self.image_shape[0] % factor or self.image_shape[1] % factor:
        raise ValueError(
            f"Images of {self.image_shape[:2]} cannot be halved {len(m.ch_mult)} times "
            f"(config.model.ch_mult={tuple(m.ch_mult)}); use fewer levels or set "
            "config.data.image_size to a multiple of " f"{factor}.")
    if m.latent_dim < 1:
      raise ValueError(f"config.model.latent_dim must be >= 1, got {m.latent_dim}.")
    if m.beta < 0 or m.free_bits < 0 or m.kl_warmup_steps < 0:
      raise ValueError("config.model.beta, free_bits and kl_warmup_steps must be >= 0, "
                       f"got {m.beta}, {m.free_bits}, {m.kl_warmup_steps}.")
    if m.train_samples < 1:
      raise ValueError(f"config.model.train_samples must be >= 1, got {m.train_samples}.")
    if m.train_samples > 1 and (m.beta != 1.0 or m.free_bits or m.kl_warmup_steps):
      raise ValueError("config.model.train_samples > 1 trains the IWAE bound, which has no "
                       "KL term: set model.beta=1, model.free_bits=0, "
                       "model.kl_warmup_steps=0.")
    if m.decoder == "gaussian" and not m.learned_scale and m.fixed_scale <= 0:
      raise ValueError(f"config.model.fixed_scale must be > 0, got {m.fixed_scale}.")
    if config.sampling.decoder_output not in DECODER_OUTPUTS:
      raise ValueError(f"config.sampling.decoder_output={config.sampling.decoder_output!r};"
                       f" choose one of {DECODER_OUTPUTS}.")
    iwae_lib.check_num_samples(ev.iwae_samples, ev.iwae_chunk)
    self.network = vae_models.VAENetwork(
        architecture=m.architecture, image_shape=self.image_shape,
        latent_dim=m.latent_dim, params_per_subpixel=self._params_per_subpixel(),
        ch=m.ch, ch_mult=tuple(m.ch_mult), hidden_sizes=tuple(m.hidden_sizes))
    self.tx = optim_lib.make_optimizer(config.optim)

  def _params_per_subpixel(self) -> int:
    m = self.config.model
    if m.decoder == "bernoulli":
      return 1
    if m.decoder == "gaussian":
      return 2 if m.learned_scale else 1
    if m.decoder == "discretized_logistic":
      return 2
    # Mixture parameters are per pixel (models/logistic_mixture.py's layout); the
    # decoder's C sub-pixel slots are flattened back into one vector per pixel.
    per_pixel = logistic_mixture.num_output_channels(self.image_shape[-1], m.num_mixtures)
    return -(-per_pixel // self.image_shape[-1])

  # ------------------------------------------------------------------ data
  def prepare(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    """uint8 images -> what the decoder models: {0, 1} (Bernoulli) or [-1, 1]."""
    m = self.config.model
    if m.decoder != "bernoulli":
      return transforms.uint8_to_centered(images)
    return transforms.binarize(images, rng, m.binarization)

  def _encoder_input(self, x: jax.Array) -> jax.Array:
    return transforms.unit_to_centered(x) if self.config.model.decoder == "bernoulli" else x

  # ------------------------------------------------------------ networks
  def encode(self, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior (mean, log_std), [B, latent_dim], of prepared data x."""
    return self.network.apply({"params": params}, self._encoder_input(x),
                              method=self.network.encode)

  def decode(self, params, z: jax.Array) -> jax.Array:
    """Decoder parameters [N, H, W, C, P] of latents z [N, latent_dim]."""
    return self.network.apply({"params": params}, z, method=self.network.decode)

  def log_likelihood(self, x: jax.Array, decoder_params: jax.Array) -> jax.Array:
    """log p(x|z) in nats summed over sub-pixels; x [..., H, W, C] -> [...]."""
    m = self.config.model
    if m.decoder == "bernoulli":
      per_subpixel = distributions.bernoulli_log_likelihood(x, decoder_params[..., 0])
    elif m.decoder == "gaussian":
      log_scale = (jnp.maximum(decoder_params[..., 1], distributions.MIN_LOG_SCALE)
                   if m.learned_scale else jnp.full_like(x, math.log(m.fixed_scale)))
      per_subpixel = distributions.discretized_gaussian_log_likelihood(
          x, means=decoder_params[..., 0], log_scales=log_scale)
    elif m.decoder == "discretized_logistic":
      per_subpixel = distributions.discretized_logistic_log_likelihood(
          x, mean=decoder_params[..., 0],
          log_scale=jnp.maximum(decoder_params[..., 1], distributions.MIN_LOG_SCALE))
    else:
      return self._mixture_log_likelihood(x, decoder_params)
    return jnp.sum(per_subpixel, axis=(-3, -2, -1))

  def _mixture_params(self, decoder_params: jax.Array) -> jax.Array:
    """[..., H, W, C, P] -> [..., H, W, K], the mixture module's per-pixel layout."""
    m = self.config.model
    h, w, c = decoder_params.shape[-4:-1]
    per_pixel = logistic_mixture.num_output_channels(c, m.num_mixtures)
    flat = decoder_params.reshape(*decoder_params.shape[:-4], h, w, -1)
    return flat[..., :per_pixel]

  def _mixture_log_likelihood(self, x: jax.Array, decoder_params: jax.Array) -> jax.Array:
    params = self._mixture_params(decoder_params)
    lead = jnp.broadcast_shapes(x.shape[:-3], params.shape[:-3])
    x_flat = jnp.broadcast_to(x, (*lead, *x.shape[-3:])).reshape(-1, *x.shape[-3:])
    params_flat = jnp.broadcast_to(params, (*lead, *params.shape[-3:])).reshape(
        -1, *params.shape[-3:])
    out = logistic_mixture.log_prob(x_flat, params_flat,
                                num_mixtures=self.config.model.num_mixtures)
    return out.reshape(lead)

  # ------------------------------------------------------------------ training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    x = self._encoder_input(self.prepare(example_batch["image"][:1], rng))
    params = self.network.init({"params": rng}, x)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def loss(self, params, batch: dict[str, Any], rng: jax.Array, step: jax.Array):
    """The weighted negative ELBO (or IWAE bound) in bits/dim, and metrics."""
    m = self.config.model
    data_rng, eps_rng = jax.random.split(rng)
    x = self.prepare(batch["image"], data_rng)
    mean, log_std = self.encode(params, x)
    to_bpd = distributions.nats_to_bits_per_dim(1.0, self.num_dims)   # per nat
    kl_per_dim = distributions.gaussian_kl_to_standard_normal(mean, 2.0 * log_std)
    kl = jnp.sum(kl_per_dim, axis=-1)
    if m.train_samples == 1:
      eps = jax.random.normal(eps_rng, mean.shape, mean.dtype)
      z = iwae_lib.reparameterize(mean, log_std, eps)
      log_lik = self.log_likelihood(x, self.decode(params, z))
      beta_t = kl_weight(step, m.beta, m.kl_warmup_steps)
      objective = -jnp.mean(log_lik) + beta_t * free_bits_kl(kl_per_dim, m.free_bits)
    else:
      eps = jax.random.normal(eps_rng, (m.train_samples, *mean.shape), mean.dtype)
      log_w, log_lik = iwae_lib.log_importance_weights(
          lambda z: self._log_likelihood_of_latents(params, x, z), mean, log_std, eps)
      bound = jax.nn.logsumexp(log_w, axis=0) - math.log(m.train_samples)
      objective = -jnp.mean(bound)
      log_lik, beta_t = jnp.mean(log_lik, axis=0), jnp.ones(())
    loss = objective * to_bpd
    metrics = dict(loss=loss, bpd_elbo=jnp.mean(kl - log_lik) * to_bpd,
                   recon_nats=-jnp.mean(log_lik), kl_nats=jnp.mean(kl), kl_weight=beta_t,
                   # Latent dimensions carrying information (Burda et al. sec. 5.2 use
                   # the posterior mean's variance; the batch's KL is a cheap proxy).
                   active_dims=jnp.sum(jnp.mean(kl_per_dim, axis=0) > 0.01))
    return loss, metrics

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics = jax.grad(self.loss, has_aux=True)(state.params, batch, rng,
                                                        state.step)
    state, step_metrics = optim_lib.apply_gradients(state, grads, self.config.optim)
    return state, dict(metrics, **step_metrics)

  # ---------------------------------------------------------------- evaluation
  def _log_likelihood_of_latents(self, params, x: jax.Array, z: jax.Array) -> jax.Array:
    """log p(x_b | z_{n,b}) [n, B] for z [n, B, D]: one decoder call on n*B latents."""
    n, b = z.shape[:2]
    decoder_params = self.decode(params, z.reshape(n * b, -1))
    return self.log_likelihood(x[None], decoder_params.reshape(n, b,
                                                               *decoder_params.shape[1:]))

  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim of the ELBO and of the IWAE bound with eval.iwae_samples."""
    ev = self.config.eval
    data_rng, sample_rng = jax.random.split(rng)
    x = self.prepare(batch["image"], data_rng)
    mean, log_std = self.encode(params, x)
    bounds = iwae_lib.importance_weighted_bounds(
        lambda z: self._log_likelihood_of_latents(params, x, z), mean, log_std,
        sample_rng, num_samples=ev.iwae_samples, chunk_size=ev.iwae_chunk)
    out = dict(bpd_elbo=distributions.nats_to_bits_per_dim(-bounds["elbo"], self.num_dims),
               bpd_iwae=distributions.nats_to_bits_per_dim(-bounds["iwae"], self.num_dims),
               kl_nats=jnp.sum(distributions.gaussian_kl_to_standard_normal(
                   mean, 2.0 * log_std), -1))
    if self.config.model.decoder == "bernoulli":
      out.update(nll_nats_elbo=-bounds["elbo"], nll_nats_iwae=-bounds["iwae"])
    return out

  # ------------------------------------------------------------------ sampling
  def decode_images(self, params, z: jax.Array, rng: jax.Array) -> jax.Array:
    """uint8 NHWC images of latents z: the decoder's mean or a draw (sampling.decoder_output)."""
    m = self.config.model
    decoder_params = self.decode(params, z)
    draw = self.config.sampling.decoder_output == "sample"
    if m.decoder == "bernoulli":
      probs = jax.nn.sigmoid(decoder_params[..., 0])
      return transforms.unit_to_uint8(jax.random.bernoulli(rng, probs) if draw else probs)
    if m.decoder == "logistic_mixture":
      # A mixture's mean is no typical image; both settings draw from p(x|z).
      params = self._mixture_params(decoder_params)
      return transforms.centered_to_uint8(
          logistic_mixture.sample(rng, params, num_mixtures=m.num_mixtures))
    mean = decoder_params[..., 0]
    if not draw:
      return transforms.centered_to_uint8(mean)
    if m.decoder == "gaussian":
      log_scale = (jnp.maximum(decoder_params[..., 1], distributions.MIN_LOG_SCALE)
                   if m.learned_scale else math.log(m.fixed_scale))
      noise = jax.random.normal(rng, mean.shape)
    else:
      log_scale = jnp.maximum(decoder_params[..., 1], distributions.MIN_LOG_SCALE)
      noise = jax.random.logistic(rng, mean.shape)
    # Rounding a continuous draw to the nearest level is a draw from the discretized
    # distribution: the bins of the edge levels extend to infinity, as does the clip.
    return transforms.centered_to_uint8(mean + jnp.exp(log_scale) * noise)

  def encode_images(self, params, images: jax.Array, rng: jax.Array) -> jax.Array:
    """Posterior means [N, latent_dim] of uint8 images (rng: dynamic binarization)."""
    mean, _ = self.encode(params, self.prepare(images, rng))
    return mean

  def reconstruct(self, params, images: jax.Array, rng: jax.Array) -> jax.Array:
    """uint8 reconstructions: decode_images of the posterior mean."""
    data_rng, decode_rng = jax.random.split(rng)
    return self.decode_images(params, self.encode_images(params, images, data_rng),
                              decode_rng)

  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC images decoded from z ~ N(0, I)."""
    z_rng, decode_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (num_samples, self.config.model.latent_dim))
    return self.decode_images(params, z, decode_rng)

  def sampler_settings(self) -> dict[str, Any]:
    m = self.config.model
    return dict(sampler="prior", decoder=m.decoder,
                decoder_output=self.config.sampling.decoder_output,
                latent_dim=m.latent_dim, nfe=1, use_ema=self.config.sampling.use_ema,
                binarization=m.binarization if m.decoder == "bernoulli" else None)

  def image_grids(self, params, images, rng: jax.Array) -> dict[str, Any]:
    """Reconstructions and linear/spherical interpolation grids of real images.

    The loop writes these beside each sample grid (PNG and TensorBoard).
    """
    from sampling import latent  # pylint: disable=g-import-not-at-top
    encode_rng, decode_rng = jax.random.split(rng)
    encode = jax.jit(lambda x: self.encode_images(params, x, encode_rng))
    decode = jax.jit(lambda z: self.decode_images(params, z, decode_rng))
    return latent.latent_grids(encode, decode, images)
