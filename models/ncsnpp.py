"""NCSN++ / DDPM++ (Song et al. 2021) and EDM's SongUNet (Karras et al. 2022).

Score networks s(x, noise_label) -> array shaped like x, for the score-SDE and EDM
families. Both return the RAW network output: no division by sigma
("scale_by_sigma") and no EDM preconditioning; the caller applies those, and also
maps its noise level to `noise_labels`:

  score_sde VE (Fourier features):  noise_labels = log(sigma)
  score_sde VP / sub-VP (positional): noise_labels = 999 t   (t in [eps, 1])
  EDM VP (positional):  c_noise = 999 sigma^-1(sigma);  EDM VE (Fourier):
  c_noise = log(sigma / 2);  EDM's own preconditioning: c_noise = log(sigma) / 4.

`NCSNpp` is the score_sde network (Song et al. 2021, App. H). DDPM++ is the same
module with resblock_type='biggan', fir=False, no progressive paths and positional
embeddings. The paper configurations for CIFAR-10 are in `SCORE_SDE_CIFAR10`.

`SongUNet` is EDM's re-implementation of DDPM++ / NCSN++ (training/networks.py of
NVlabs/edm). Its residual blocks compute what NCSN++'s BigGAN blocks compute (its
[1, 1] resampling filter is exactly nearest / average pooling, and its
[1, 3, 3, 1] filter is NCSN++'s FIR), but it differs in: class labels enter as a
Linear of a scaled one-hot vector BEFORE the embedding MLP (plus a Linear of the
augmentation labels, and class-label dropout), a SiLU after the MLP's second layer
rather than in each block, attention inside the residual block, and its encoder
'skip' / decoder 'skip' variants. It is therefore a separate module, with EDM's
layer names. Unconditional and without augment labels it computes the same
function as the matching NCSNpp given the same weights (tested). EDM's CIFAR-10
networks (channel_mult (2, 2, 2)) are in `EDM_CIFAR10`.

Parameter counts at 32x32x3 (unconditional): NCSN++ cont. 62.76M, NCSN++ cont.
deep 107.59M, DDPM++ cont. 61.80M, DDPM++ cont. deep 106.63M; EDM DDPM++ 55.73M,
EDM NCSN++ 56.40M (`PARAM_COUNTS_CIFAR10`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models import layerspp
from models import up_or_down_sampling as resampling

Dtype = Any

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
EMBEDDING_TYPES = ("fourier", "positional")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")


def _check_choice(field: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{field} must be one of {tuple(choices)}, got {value!r}.")


def _check_common_inputs(x: jax.Array, noise_labels: jax.Array,
                         y: jax.Array | None, num_levels: int,
                         num_classes: int) -> None:
  """Raises ValueError for bad shapes, from static shapes only (before compiling)."""
  if num_levels < 1:
    raise ValueError("ch_mult / channel_mult must name at least one resolution level.")
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
  batch, height, width, _ = x.shape
  factor = 2**(num_levels - 1)
  if height % factor or width % factor:
    raise ValueError(
        f"Image size {height}x{width} is not divisible by {factor} = 2**(number of "
        "levels - 1): resize the images or use fewer resolution levels.")
  if noise_labels.shape != (batch,):
    raise ValueError(f"noise_labels must have shape [batch] = ({batch},), got "
                     f"{noise_labels.shape}.")
  if num_classes > 0:
    if y is None:
      raise ValueError(
          f"This network is class-conditional (num_classes={num_classes}): pass "
          f"integer labels y of shape ({batch},); y={num_classes} is the null label.")
    if y.shape != (batch,) or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"y must be integer labels of shape ({batch},), got {y.dtype} "
                       f"{y.shape}.")
  elif y is not None:
    raise ValueError("Labels y were given but num_classes=0: set num_classes to "
                     "condition on labels.")


class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network of Song et al. 2021 (App. H).

  __call__(x [B, H, W, C], noise_labels [B] float, y [B] int or None, *, train)
  -> [B, H, W, out_channels] float32, the raw output (the caller divides by sigma).
  """
  nf: int = 128  # base channels; the embedding MLP has 4 * nf features
  ch_mult: Sequence[int] = (1, 2, 2, 2)  # channels nf * ch_mult[i] at level i
  num_res_blocks: int = 4  # residual blocks per level on the way down (+1 up)
  attn_resolutions: Sequence[int] = (16,)  # feature-map sizes with self-attention
  dropout: float = 0.1
  resamp_with_conv: bool = True  # 'ddpm' blocks: conv in the Up/Downsample layers
  fir: bool = True  # FIR [1,3,3,1] resampling (else nearest / average pooling)
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True  # divide every residual sum by sqrt(2)
  resblock_type: str = "biggan"  # 'biggan' (resampling blocks) or 'ddpm'
  progressive: str = "none"  # output pyramid: 'none' | 'output_skip' | 'residual'
  progressive_input: str = "none"  # 'none' | 'input_skip' | 'residual'
  progressive_combine: str = "sum"  # how 'input_skip' merges: 'sum' | 'cat'
  embedding_type: str = "fourier"  # 'fourier' (of log sigma) | 'positional'
  fourier_scale: float = 16.0  # std of the Fourier frequencies W
  init_scale: float = 0.0  # scale of the last layer of each branch (0 -> 1e-10)
  # > 0: a learned class embedding (num_classes + 1 rows; row num_classes is the
  # "null" label for classifier-free guidance) is added to the 4 nf embedding.
  num_classes: int = 0
  num_groups: int = 32  # GroupNorm groups, min(num_groups, C / 4)
  out_channels: int = 3
  # True: the network first maps its input x to 2 x - 1 (the input pyramid too), as
  # score_sde's NCSNpp does for data in [0, 1] (`if not config.data.centered`) and
  # diffusers' UNet2DModel does with center_input_sample=True; published VE weights
  # (score_sde's, google/ncsnpp-*) need it. False: x as given (bit for bit as before).
  center_input: bool = False
  dtype: Dtype = jnp.float32  # computation dtype; parameters stay float32

  def _check(self, x: jax.Array, noise_labels: jax.Array,
             y: jax.Array | None) -> None:
    _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
    _check_choice("progressive", self.progressive, PROGRESSIVE)
    _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
    _check_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
    _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
    if self.nf < 4:
      raise ValueError(f"nf must be at least 4, got {self.nf}.")
    if self.num_res_blocks < 1:
      raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
    if self.out_channels < 1:
      raise ValueError(f"out_channels must be >= 1, got {self.out_channels}.")
    _check_common_inputs(x, noise_labels, y, len(self.ch_mult), self.num_classes)

  def _embed(self, noise_labels: jax.Array, y: jax.Array | None) -> jax.Array:
    """Noise-level (and class) embedding, [B, 4 nf]."""
    if self.embedding_type == "fourier":
      temb = layerspp.GaussianFourierProjection(
          embedding_size=self.nf, scale=self.fourier_scale,
          name="fourier_proj")(noise_labels)
    else:
      temb = layers.timestep_embedding(noise_labels, self.nf)
    temb = layers.dense(4 * self.nf, dtype=self.dtype, name="temb_dense0")(temb)
    temb = layers.dense(4 * self.nf, dtype=self.dtype, name="temb_dense1")(
        nn.silu(temb))
    if self.num_classes > 0:
      temb += nn.Embed(self.num_classes + 1, 4 * self.nf, dtype=self.dtype,
                       param_dtype=jnp.float32, name="class_embed")(y)
    return temb

  def _resnet(self, name: str, out_ch: int | None = None, up: bool = False,
              down: bool = False) -> nn.Module:
    common = dict(out_ch=out_ch, dropout=self.dropout, skip_rescale=self.skip_rescale,
                  init_scale=self.init_scale, num_groups=self.num_groups,
                  dtype=self.dtype, name=name)
    if self.resblock_type == "ddpm":
      return layerspp.ResnetBlockDDPMpp(**common)
    return layerspp.ResnetBlockBigGANpp(up=up, down=down, fir=self.fir,
                                        fir_kernel=tuple(self.fir_kernel), **common)

  def _attention(self, name: str) -> nn.Module:
    return layerspp.AttnBlockpp(skip_rescale=self.skip_rescale,
                                init_scale=self.init_scale,
                                num_groups=self.num_groups, dtype=self.dtype, name=name)

  def _norm_act_conv(self, h: jax.Array, features: int, init_scale: float,
                     name: str) -> jax.Array:
    h = nn.silu(layers.group_norm(h.shape[-1], self.num_groups, self.dtype,
                                  f"{name}_norm")(h))
    return layers.conv3x3(features, init_scale=init_scale, dtype=self.dtype,
                          name=f"{name}_conv")(h)

  @nn.compact
  def __call__(self, x: jax.Array, noise_labels: jax.Array,
               y: jax.Array | None = None, *, train: bool) -> jax.Array:
    self._check(x, noise_labels, y)
    num_levels = len(self.ch_mult)
    fir_kernel = tuple(self.fir_kernel)
    temb = self._embed(noise_labels, y)
    x = x.astype(self.dtype)
    if self.center_input:
      x = 2 * x - 1

    # Downsampling path; `input_pyramid` is the progressively downsampled input.
    input_pyramid = x if self.progressive_input != "none" else None
    hs = [layers.conv3x3(self.nf, dtype=self.dtype, name="conv_in")(x)]
    for level, mult in enumerate(self.ch_mult):
      for block in range(self.num_res_blocks):
        h = self._resnet(f"down_{level}_block_{block}", self.nf * mult)(
            hs[-1], temb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = self._attention(f"down_{level}_attn_{block}")(h)
        hs.append(h)
      if level == num_levels - 1:
        continue
      if self.resblock_type == "ddpm":
        h = layerspp.Downsample(with_conv=self.resamp_with_conv, fir=self.fir,
                                fir_kernel=fir_kernel, dtype=self.dtype,
                                name=f"down_{level}_downsample")(hs[-1])
      else:
        h = self._resnet(f"down_{level}_downsample", down=True)(
            hs[-1], temb, train=train)
      if self.progressive_input == "input_skip":
        input_pyramid = layerspp.Downsample(with_conv=False, fir=self.fir,
                                            fir_kernel=fir_kernel)(input_pyramid)
        h = layerspp.Combine(self.progressive_combine, dtype=self.dtype,
                             name=f"down_{level}_combine")(input_pyramid, h)
      elif self.progressive_input == "residual":
        input_pyramid = layerspp.Downsample(
            out_ch=h.shape[-1], with_conv=True, fir=self.fir, fir_kernel=fir_kernel,
            dtype=self.dtype, name=f"down_{level}_pyramid")(input_pyramid)
        h = input_pyramid = layerspp.rescale_sum(input_pyramid, h, self.skip_rescale)
      hs.append(h)

    h = hs[-1]
    h = self._resnet("mid_block_0")(h, temb, train=train)
    h = self._attention("mid_attn")(h)
    h = self._resnet("mid_block_1")(h, temb, train=train)

    # Upsampling path; `pyramid` is the progressively upsampled output.
    pyramid = None
    for level in reversed(range(num_levels)):
      for block in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop().astype(h.dtype)], axis=-1)
        h = self._resnet(f"up_{level}_block_{block}", self.nf * self.ch_mult[level])(
            h, temb, train=train)
      # One attention layer per level, after its blocks (unlike the DDPM U-Net).
      if h.shape[1] in self.attn_resolutions:
        h = self._attention(f"up_{level}_attn")(h)

      if self.progressive == "output_skip":
        # Each level adds its own RGB prediction to the upsampled coarser ones.
        rgb = self._norm_act_conv(h, self.out_channels, self.init_scale,
                                  f"up_{level}_pyramid")
        if pyramid is None:
          pyramid = rgb
        else:
          pyramid = layerspp.Upsample(with_conv=False, fir=self.fir,
                                      fir_kernel=fir_kernel)(pyramid) + rgb
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = self._norm_act_conv(h, h.shape[-1], 1.0, f"up_{level}_pyramid")
        else:
          pyramid = layerspp.Upsample(
              out_ch=h.shape[-1], with_conv=True, fir=self.fir, fir_kernel=fir_kernel,
              dtype=self.dtype, name=f"up_{level}_pyramid_upsample")(pyramid)
          h = pyramid = layerspp.rescale_sum(pyramid, h, self.skip_rescale)

      if level != 0:
        if self.resblock_type == "ddpm":
          h = layerspp.Upsample(with_conv=self.resamp_with_conv, fir=self.fir,
                                fir_kernel=fir_kernel, dtype=self.dtype,
                                name=f"up_{level}_upsample")(h)
        else:
          h = self._resnet(f"up_{level}_upsample", up=True)(h, temb, train=train)
    assert not hs, "every skip connection must be consumed"

    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = self._norm_act_conv(h, self.out_channels, self.init_scale, "out")
    return h.astype(jnp.float32)


# ------------------------------------------------------------------- EDM SongUNet

# EDM's initialisers (xavier_uniform = variance scaling 1, 'fan_avg', uniform).
_EDM_INIT = layers.default_init(1.0)
# init_weight=1e-5 on xavier_uniform: variance scale (1e-5)^2 = 1e-10.
_EDM_INIT_ZERO = layers.default_init(1e-10)
# init_weight=sqrt(0.2) on the fused qkv projection (fans C, 3C): the variance
# 0.2 * 2 / 4C = 0.1 / C of NCSN++'s separate q, k, v with scale 0.1.
_EDM_INIT_ATTN = layers.default_init(0.2)


def _edm_dense(features: int, init: nn.initializers.Initializer, dtype: Dtype,
               name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=init,
                  bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def _edm_conv(features: int, kernel_size: int, init: nn.initializers.Initializer,
              dtype: Dtype, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel_size, kernel_size), padding="SAME",
                 kernel_init=init, bias_init=nn.initializers.zeros, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class UNetBlock(nn.Module):
  """EDM's U-Net block: a BigGAN-style residual block plus optional attention.

  x -> (conv1(drop(act(norm1(conv0(resample(act(norm0(x)))) + affine(emb)))))
        + skip(resample(x))) * skip_scale, then, with attention,
  x -> (proj(attn(qkv(norm2(x)))) + x) * skip_scale. `emb` already went through
  a SiLU in the mapping network.
  """
  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  dropout: float = 0.0
  skip_scale: float = math.sqrt(0.5)
  resample_filter: Sequence[int] = (1, 1)
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  def _resample(self, x: jax.Array) -> jax.Array:
    if self.up:
      return resampling.upsample_2d(x, self.resample_filter, factor=2)
    if self.down:
      return resampling.downsample_2d(x, self.resample_filter, factor=2)
    return x

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    out = self.out_channels
    h = nn.silu(layers.group_norm(in_channels, self.num_groups, self.dtype, "norm0")(x))
    h = _edm_conv(out, 3, _EDM_INIT, self.dtype, "conv0")(self._resample(h))
    h = h + _edm_dense(out, _EDM_INIT, self.dtype, "affine")(emb)[:, None, None, :]
    h = nn.silu(layers.group_norm(out, self.num_groups, self.dtype, "norm1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _edm_conv(out, 3, _EDM_INIT_ZERO, self.dtype, "conv1")(h)
    skip = self._resample(x.astype(h.dtype))
    if out != in_channels or self.up or self.down:
      skip = _edm_conv(out, 1, _EDM_INIT, self.dtype, "skip")(skip)
    x = (h + skip) * self.skip_scale

    if self.attention:
      batch, height, width, _ = x.shape
      a = layers.group_norm(out, self.num_groups, self.dtype, "norm2")(x)
      qkv = _edm_conv(3 * out, 1, _EDM_INIT_ATTN, self.dtype, "qkv")(a)
      q, k, v = (t.reshape(batch, height * width, out)
                 for t in jnp.split(qkv, 3, axis=-1))
      logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
      weights = jax.nn.softmax(logits / math.sqrt(out), axis=-1).astype(v.dtype)
      a = jnp.einsum("bij,bjc->bic", weights, v).reshape(x.shape)
      a = _edm_conv(out, 1, _EDM_INIT_ZERO, self.dtype, "proj")(a)
      x = (a + x) * self.skip_scale
    return x


class SongUNet(nn.Module):
  """EDM's DDPM++ / NCSN++ network (Karras et al. 2022, training/networks.py).

  __call__(x, noise_labels, y=None, *, train, augment_labels=None) -> float32
  array of x's shape (with out_channels channels), the raw F_theta of EDM.
  """
  model_channels: int = 128  # base channels
  channel_mult: Sequence[int] = (1, 2, 2, 2)  # channels per resolution level
  channel_mult_emb: int = 4  # embedding width = model_channels * this
  num_blocks: int = 4  # residual blocks per level (encoder; decoder has +1)
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.10
  label_dropout: float = 0.0  # probability of dropping the class label (CFG)
  # > 0: class-conditional; y in [0, num_classes], y = num_classes is the null
  # label (an all-zero one-hot, what EDM feeds for "no label").
  num_classes: int = 0
  augment_dim: int = 0  # > 0: conditioning on augmentation labels (EDM: 9)
  embedding_type: str = "positional"  # 'positional' (DDPM++) | 'fourier' (NCSN++)
  channel_mult_noise: int = 1  # noise-embedding width: 1 for DDPM++, 2 for NCSN++
  encoder_type: str = "standard"  # 'standard' | 'skip' | 'residual' (NCSN++)
  decoder_type: str = "standard"  # 'standard' | 'skip'
  resample_filter: Sequence[int] = (1, 1)  # [1, 1] DDPM++, [1, 3, 3, 1] NCSN++
  fourier_scale: float = 16.0
  num_groups: int = 32
  out_channels: int = 3
  dtype: Dtype = jnp.float32

  def _check(self, x, noise_labels, y, augment_labels) -> None:
    _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
    _check_choice("encoder_type", self.encoder_type, ENCODER_TYPES)
    _check_choice("decoder_type", self.decoder_type, DECODER_TYPES)
    if self.model_channels < 4:
      raise ValueError(f"model_channels must be at least 4, got {self.model_channels}.")
    if self.num_blocks < 1:
      raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}.")
    for name in ("dropout", "label_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
    _check_common_inputs(x, noise_labels, y, len(self.channel_mult), self.num_classes)
    if augment_labels is not None:
      if self.augment_dim == 0:
        raise ValueError("augment_labels were given but augment_dim=0.")
      if augment_labels.shape != (x.shape[0], self.augment_dim):
        raise ValueError(f"augment_labels must have shape ({x.shape[0]}, "
                         f"{self.augment_dim}), got {augment_labels.shape}.")

  def _map(self, noise_labels, y, augment_labels, train: bool) -> jax.Array:
    """EDM's mapping network: [B] labels -> [B, model_channels * channel_mult_emb]."""
    noise_channels = self.model_channels * self.channel_mult_noise
    emb_channels = self.model_channels * self.channel_mult_emb
    # EDM swaps its [cos, sin] to [sin, cos]; its positional frequencies
    # 10000^(-i / (n/2 - 1)) ("endpoint") are those of DDPM's embedding.
    if self.embedding_type == "positional":
      emb = layers.timestep_embedding(noise_labels, noise_channels)
    else:
      emb = layerspp.GaussianFourierProjection(
          embedding_size=noise_channels // 2, scale=self.fourier_scale,
          name="map_noise")(noise_labels)
    if self.num_classes > 0:
      # The null label num_classes one-hot encodes to all zeros.
      one_hot = jax.nn.one_hot(y, self.num_classes, dtype=jnp.float32)
      if train and self.label_dropout > 0:
        keep = jax.random.uniform(self.make_rng("dropout"), (y.shape[0], 1))
        one_hot = one_hot * (keep >= self.label_dropout)
      emb = emb + _edm_dense(noise_channels, _EDM_INIT, self.dtype, "map_label")(
          one_hot * math.sqrt(self.num_classes))
    if self.augment_dim > 0:
      # No bias: absent labels (zeros) contribute nothing, as in EDM.
      if augment_labels is None:
        augment_labels = jnp.zeros((noise_labels.shape[0], self.augment_dim))
      emb = emb + _edm_dense(noise_channels, _EDM_INIT, self.dtype, "map_augment",
                             use_bias=False)(augment_labels)
    emb = nn.silu(_edm_dense(emb_channels, _EDM_INIT, self.dtype, "map_layer0")(emb))
    return nn.silu(_edm_dense(emb_channels, _EDM_INIT, self.dtype, "map_layer1")(emb))

  @nn.compact
  def __call__(self, x: jax.Array, noise_labels: jax.Array,
               y: jax.Array | None = None, *, train: bool,
               augment_labels: jax.Array | None = None) -> jax.Array:
    self._check(x, noise_labels, y, augment_labels)
    emb = self._map(noise_labels, y, augment_labels, train)
    resample_filter = tuple(self.resample_filter)
    num_levels = len(self.channel_mult)

    def block(name: str, out: int, **kwargs) -> UNetBlock:
      return UNetBlock(out, dropout=self.dropout, resample_filter=resample_filter,
                       num_groups=self.num_groups, dtype=self.dtype, name=name,
                       **kwargs)

    # Encoder.
    x = x.astype(self.dtype)
    aux = x
    skips = []
    image_res = x.shape[1]  # EDM names layers by the square resolution
    for level, mult in enumerate(self.channel_mult):
      res = image_res >> level
      prefix = f"enc_{res}x{res}"
      if level == 0:
        x = _edm_conv(self.model_channels, 3, _EDM_INIT, self.dtype,
                      f"{prefix}_conv")(x)
      else:
        x = block(f"{prefix}_down", x.shape[-1], down=True)(x, emb, train=train)
        if self.encoder_type == "skip":
          aux = resampling.downsample_2d(aux, resample_filter, factor=2)
          x = x + _edm_conv(x.shape[-1], 1, _EDM_INIT, self.dtype,
                            f"{prefix}_aux_skip")(aux)
        elif self.encoder_type == "residual":
          # Fused 3x3 conv + FIR downsampling of the input pyramid.
          aux = resampling.Conv2d(x.shape[-1], 3, down=True,
                                  resample_kernel=resample_filter,
                                  kernel_init=_EDM_INIT, dtype=self.dtype,
                                  name=f"{prefix}_aux_residual")(aux)
          x = aux = (x + aux) / math.sqrt(2.0)
      skips.append(x)
      for idx in range(self.num_blocks):
        x = block(f"{prefix}_block{idx}", self.model_channels * mult,
                  attention=x.shape[1] in self.attn_resolutions)(x, emb, train=train)
        skips.append(x)

    # Decoder.
    aux = None
    for level in reversed(range(num_levels)):
      mult = self.channel_mult[level]
      res = image_res >> level
      prefix = f"dec_{res}x{res}"
      if level == num_levels - 1:
        x = block(f"{prefix}_in0", x.shape[-1], attention=True)(x, emb, train=train)
        x = block(f"{prefix}_in1", x.shape[-1])(x, emb, train=train)
      else:
        x = block(f"{prefix}_up", x.shape[-1], up=True)(x, emb, train=train)
      for idx in range(self.num_blocks + 1):
        x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
        # Attention after the last block of a level (once per level).
        attention = idx == self.num_blocks and x.shape[1] in self.attn_resolutions
        x = block(f"{prefix}_block{idx}", self.model_channels * mult,
                  attention=attention)(x, emb, train=train)
      if self.decoder_type == "skip" or level == 0:
        if self.decoder_type == "skip" and aux is not None:
          aux = resampling.upsample_2d(aux, resample_filter, factor=2)
        tmp = layers.group_norm(x.shape[-1], self.num_groups, self.dtype,
                                f"{prefix}_aux_norm")(x)
        tmp = _edm_conv(self.out_channels, 3, _EDM_INIT_ZERO, self.dtype,
                        f"{prefix}_aux_conv")(nn.silu(tmp))
        aux = tmp if aux is None else tmp + aux
    assert not skips, "every skip connection must be consumed"
    return aux.astype(jnp.float32)


# ------------------------------------------------------------- paper configs

# Song et al. 2021, CIFAR-10 (configs/{ve,vp,subvp}/cifar10_*_continuous.py of
# yang-song/score_sde): the network fields of each configuration. All use
# dropout 0.1, GroupNorm, swish, conditional=True, init_scale 0.
_NCSNPP_CONT = dict(
    nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
    dropout=0.1, resamp_with_conv=True, fir=True, fir_kernel=(1, 3, 3, 1),
    skip_rescale=True, resblock_type="biggan", progressive="none",
    progressive_input="residual", progressive_combine="sum",
    embedding_type="fourier", fourier_scale=16.0, init_scale=0.0)
_DDPMPP_CONT = dict(_NCSNPP_CONT, fir=False, progressive_input="none",
                    embedding_type="positional")
SCORE_SDE_CIFAR10: dict[str, dict[str, Any]] = {
    # VE SDE, "NCSN++ cont." (Table 3), scale_by_sigma in the caller.
    "ve_ncsnpp_continuous": _NCSNPP_CONT,
    # VE SDE, "NCSN++ cont. (deep)": twice the residual blocks.
    "ve_ncsnpp_deep_continuous": dict(_NCSNPP_CONT, num_res_blocks=8),
    # VP SDE, "DDPM++ cont." and "DDPM++ cont. (deep)".
    "vp_ddpmpp_continuous": _DDPMPP_CONT,
    "vp_ddpmpp_deep_continuous": dict(_DDPMPP_CONT, num_res_blocks=8),
    # sub-VP SDE: the same networks as VP.
    "subvp_ddpmpp_continuous": _DDPMPP_CONT,
    "subvp_ddpmpp_deep_continuous": dict(_DDPMPP_CONT, num_res_blocks=8),
}

# Karras et al. 2022 (EDM), CIFAR-10 32x32 (train.py of NVlabs/edm: --arch
# ddpmpp / ncsnpp, default --dropout 0.13, --augment 0.12 -> augment_dim 9).
_EDM_COMMON = dict(model_channels=128, channel_mult=(2, 2, 2), channel_mult_emb=4,
                   num_blocks=4, attn_resolutions=(16,), dropout=0.13,
                   augment_dim=9, decoder_type="standard")
EDM_CIFAR10: dict[str, dict[str, Any]] = {
    # --arch=ddpmpp (used with VP and EDM preconditioning).
    "ddpmpp": dict(_EDM_COMMON, embedding_type="positional", channel_mult_noise=1,
                   encoder_type="standard", resample_filter=(1, 1)),
    # --arch=ncsnpp (used with VE preconditioning).
    "ncsnpp": dict(_EDM_COMMON, embedding_type="fourier", channel_mult_noise=2,
                   encoder_type="residual", resample_filter=(1, 3, 3, 1)),
}

# Parameter counts at 32x32x3, unconditional, as measured (jax.eval_shape of init)
# and checked against a layer-by-layer hand count in tests/test_ncsnpp.py. The
# NCSN++ counts include the 128 frozen Fourier weights W (a parameter here and in
# score_sde; a buffer, hence not counted, in EDM: EDM's NCSN++ is 56,397,827
# without it). EDM's DDPM++ count rounds to the 55.73M attributed to the EDM
# paper. Class conditioning (num_classes=10) adds 11 * 512 to NCSNpp and
# 10 * noise_channels + noise_channels to SongUNet.
PARAM_COUNTS_CIFAR10: dict[str, int] = {
    "ve_ncsnpp_continuous": 62_758_915,
    "ve_ncsnpp_deep_continuous": 107_587_075,
    "vp_ddpmpp_continuous": 61_804_419,  # also sub-VP
    "vp_ddpmpp_deep_continuous": 106_632_579,  # also sub-VP deep
    "edm_ddpmpp": 55_733_891,
    "edm_ncsnpp": 56_397_955,
}


def score_sde_cifar10(name: str, **overrides: Any) -> NCSNpp:
  """An NCSNpp with the fields of SCORE_SDE_CIFAR10[name], then `overrides`."""
  if name not in SCORE_SDE_CIFAR10:
    raise ValueError(f"Unknown score_sde CIFAR-10 network {name!r}; choose one of "
                     f"{sorted(SCORE_SDE_CIFAR10)}.")
  return NCSNpp(**{**SCORE_SDE_CIFAR10[name], **overrides})


def edm_cifar10(name: str, **overrides: Any) -> SongUNet:
  """A SongUNet with the fields of EDM_CIFAR10[name], then `overrides`."""
  if name not in EDM_CIFAR10:
    raise ValueError(f"Unknown EDM CIFAR-10 network {name!r}; choose one of "
                     f"{sorted(EDM_CIFAR10)}.")
  return SongUNet(**{**EDM_CIFAR10[name], **overrides})
