"""Text conditioning for the `shapes` captions: tokenizer, encoder, prompt accuracy.

- A word-level tokenizer over the closed vocabulary of datasets/shapes.py
  ("a {colour} {shape} at {position}"); id 0 is padding, and an all-padding row
  is the null caption of classifier-free guidance.
- `TextEncoder`: a small pre-LayerNorm Transformer over the tokens, masked
  mean-pooled and projected to one vector per caption, which is added to the
  U-Net's time embedding (as the class embedding is), trained jointly with the
  diffusion model. `TextConditioned` wires an encoder to a network that takes
  `cond_embedding`.
- `prompt_accuracy`: how often generated images show what their prompts asked
  for: the shape by the shapes classifier (evaluation/classifier.py predicts the
  shape only), the colour and the position by reading the pixels.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from datasets import shapes as shapes_data

PAD_TOKEN = '<pad>'
PAD_ID = 0


def _vocabulary() -> tuple[str, ...]:
  """<pad>, the template words, then every factor word in datasets/shapes.py order."""
  words = [PAD_TOKEN, 'a', 'at']
  factor_words = list(shapes_data.SHAPES) + list(shapes_data.COLOURS)
  for position in shapes_data.POSITIONS:
    factor_words += position.split()
  for word in factor_words:
    if word not in words:
      words.append(word)
  return tuple(words)


VOCABULARY = _vocabulary()
WORD_TO_ID = {word: i for i, word in enumerate(VOCABULARY)}
VOCAB_SIZE = len(VOCABULARY)
# The longest caption of the dataset ("a magenta triangle at bottom center": 6).
MAX_CAPTION_TOKENS = max(
    len(shapes_data.caption(s, c, p).split()) for s in shapes_data.SHAPES
    for c in shapes_data.COLOURS for p in shapes_data.POSITIONS)


# ------------------------------------------------------------------ tokenizer
def tokenize(captions: str | Sequence[str],
             max_length: int = MAX_CAPTION_TOKENS) -> np.ndarray:
  """Captions -> int32 token ids [N, max_length], right-padded with PAD_ID.

  Words are split on whitespace and lower-cased. Raises ValueError for a word
  outside the shapes vocabulary (listing the known words) or a caption longer
  than max_length. The empty caption "" is the null caption (all padding).
  """
  if isinstance(captions, str):
    captions = [captions]
  tokens = np.full((len(captions), max_length), PAD_ID, np.int32)
  for row, text in enumerate(captions):
    if not isinstance(text, str):
      raise ValueError(f'Captions must be strings, got {type(text).__name__}.')
    words = text.lower().split()
    unknown = [w for w in words if w not in WORD_TO_ID or w == PAD_TOKEN]
    if unknown:
      raise ValueError(
          f'Unknown word(s) {unknown} in caption {text!r}; the shapes vocabulary '
          f'is {list(VOCABULARY[1:])}, e.g. '
          f'{shapes_data.caption("circle", "red", "top left")!r}.')
    if len(words) > max_length:
      raise ValueError(f'Caption {text!r} has {len(words)} words; at most '
                       f'{max_length} fit (max_length).')
    tokens[row, :len(words)] = [WORD_TO_ID[w] for w in words]
  return tokens


def detokenize(tokens: np.ndarray) -> list[str]:
  """Token ids [N, L] -> captions; padding is dropped (the null caption is "")."""
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f'tokens must be [N, L], got shape {tokens.shape}.')
  if tokens.min(initial=0) < 0 or tokens.max(initial=0) >= VOCAB_SIZE:
    raise ValueError(f'Token ids must be in [0, {VOCAB_SIZE}), got '
                     f'[{tokens.min()}, {tokens.max()}].')
  return [' '.join(VOCABULARY[i] for i in row if i != PAD_ID) for row in tokens]


def null_tokens(batch_size: int, max_length: int = MAX_CAPTION_TOKENS) -> np.ndarray:
  """The null caption (all padding) for classifier-free guidance, [B, max_length]."""
  return np.full((batch_size, max_length), PAD_ID, np.int32)


def caption_table(max_length: int = MAX_CAPTION_TOKENS) -> np.ndarray:
  """Tokens of every dataset caption, [num_shapes, num_colours, num_positions, L].

  Indexed by the dataset's integer factors (its ClassLabel ids), so that a
  jitted train step turns factor labels into captions with one gather.
  """
  captions = [
      shapes_data.caption(s, c, p) for s in shapes_data.SHAPES
      for c in shapes_data.COLOURS for p in shapes_data.POSITIONS]
  return tokenize(captions, max_length).reshape(
      len(shapes_data.SHAPES), len(shapes_data.COLOURS),
      len(shapes_data.POSITIONS), max_length)


def tokens_from_factors(shape: jax.Array, colour: jax.Array, position: jax.Array,
                        max_length: int = MAX_CAPTION_TOKENS) -> jax.Array:
  """Caption tokens [B, L] of integer factors [B] (jit-able gather)."""
  table = jnp.asarray(caption_table(max_length))
  return table[shape, colour, position]


def parse_caption(caption: str) -> dict[str, int]:
  """'a red circle at top left' -> {'shape': 0, 'colour': 0, 'position': 0}.

  The inverse of datasets.shapes.caption, with the dataset's factor ids.
  """
  words = caption.lower().split()
  colours, positions = tuple(shapes_data.COLOURS), tuple(shapes_data.POSITIONS)
  if (len(words) < 5 or words[0] != 'a' or words[3] != 'at'
      or words[1] not in colours or words[2] not in shapes_data.SHAPES
      or ' '.join(words[4:]) not in positions):
    raise ValueError(
        f'Caption {caption!r} does not follow "a {{colour}} {{shape}} at '
        f'{{position}}" with colour in {list(colours)}, shape in '
        f'{list(shapes_data.SHAPES)}, position in {list(positions)}.')
  return {'shape': shapes_data.SHAPES.index(words[2]),
          'colour': colours.index(words[1]),
          'position': positions.index(' '.join(words[4:]))}


# -------------------------------------------------------------------- encoder
class _TransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention + MLP block (Vaswani et al. 2017, pre-LN form)."""
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    width = h.shape[-1]
    attention_mask = nn.make_attention_mask(mask, mask)  # [B, 1, L, L]
    y = nn.LayerNorm(name='norm_attn')(h)
    h = h + nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, name='attn')(y, y, mask=attention_mask)
    y = nn.LayerNorm(name='norm_mlp')(h)
    y = nn.Dense(self.mlp_ratio * width, name='mlp_in')(y)
    return h + nn.Dense(width, name='mlp_out')(nn.gelu(y))


class TextEncoder(nn.Module):
  """Tokens [B, L] -> one conditioning vector per caption, [B, out_dim].

  Token + learned position embeddings, `num_layers` Transformer blocks that
  attend over non-padding tokens only, a mean over non-padding tokens, then
  LayerNorm -> Dense(out_dim). The null caption (all padding) pools to zeros,
  so it maps to one learned vector (the output layer's bias after LayerNorm):
  the unconditional embedding of classifier-free guidance.
  """
  out_dim: int  # = the U-Net's time-embedding width, 4 * ch
  width: int = 64  # token embedding width
  num_layers: int = 2
  num_heads: int = 4
  max_length: int = MAX_CAPTION_TOKENS
  vocab_size: int = VOCAB_SIZE
  # > 0: also return the tokens' features, LayerNorm -> Dense(context_dim), and
  # their mask, for a U-Net's cross-attention: (vector, [B, L, context_dim], [B, L]).
  context_dim: int = 0

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array,
                                                               jax.Array]:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'tokens must be integer ids [B, L], got {tokens.dtype} '
                       f'{tokens.shape}.')
    if tokens.shape[1] > self.max_length:
      raise ValueError(f'Captions of {tokens.shape[1]} tokens exceed max_length='
                       f'{self.max_length}.')
    if self.width % self.num_heads:
      raise ValueError(f'width={self.width} must be divisible by num_heads='
                       f'{self.num_heads}.')
    mask = tokens != PAD_ID  # [B, L]
    h = nn.Embed(self.vocab_size, self.width, name='token_embed')(tokens)
    positions = self.param('position_embed', nn.initializers.normal(0.02),
                           (self.max_length, self.width))
    h = h + positions[:tokens.shape[1]]
    for i in range(self.num_layers):
      h = _TransformerBlock(self.num_heads, name=f'block_{i}')(h, mask)
    weights = mask[..., None].astype(h.dtype)
    pooled = jnp.sum(h * weights, axis=1) / jnp.maximum(
        jnp.sum(weights, axis=1), 1.0)
    vector = nn.Dense(self.out_dim, name='out')(nn.LayerNorm(name='norm_out')(pooled))
    if not self.context_dim:
      return vector
    context = nn.Dense(self.context_dim, name='context')(
        nn.LayerNorm(name='norm_context')(h))
    return vector, context, mask


class TextConditioned(nn.Module):
  """network(x, t, cond_embedding=encoder(tokens), train=train): joint training.

  `network` must accept a `cond_embedding` keyword of shape [B, encoder.out_dim]
  (the U-Net after the change described in the report: added to temb).
  The call signature (x, t, tokens, *, train) matches UNet(x, t, y, train=...),
  so a family swaps labels for tokens and keeps everything else.
  """
  network: nn.Module
  encoder: TextEncoder

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, tokens: jax.Array, *,
               train: bool) -> jax.Array:
    if self.encoder.context_dim:   # the network cross-attends to the tokens too
      vector, context, mask = self.encoder(tokens)
      return self.network(x, t, cond_embedding=vector, context=context,
                          context_mask=mask, train=train)
    return self.network(x, t, cond_embedding=self.encoder(tokens), train=train)


# ------------------------------------------------------------ prompt accuracy
# Dataset background is grey (R = G = B) and every COLOURS entry has a channel
# spread (max - min) of at least 215, so spread separates shape from background.
_FOREGROUND_SPREAD = 100


def read_colour_and_position(images: np.ndarray) -> dict[str, np.ndarray]:
  """Colour and position ids read off uint8 [N, H, W, 3] shapes images.

  Foreground = pixels with channel spread > 100 (the background is grey).
  Colour: the COLOURS entry nearest (RGB) to the foreground's mean colour.
  Position: the POSITIONS centre nearest to the foreground's centroid (the
  triangle's centroid sits h/3 below its centre, h <= 0.17 S, well inside the
  0.15 S half-spacing of the grid). An image with no foreground gets -1.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'Expected uint8 RGB images [N, H, W, 3], got {images.dtype} '
                     f'{images.shape}.')
  n, height, width, _ = images.shape
  pixels = images.astype(np.float64)
  foreground = (pixels.max(-1) - pixels.min(-1)) > _FOREGROUND_SPREAD  # [N, H, W]
  counts = foreground.sum(axis=(1, 2))
  safe = np.maximum(counts, 1)[:, None]
  mean_colour = np.einsum('nhw,nhwc->nc', foreground, pixels) / safe
  palette = np.asarray(list(shapes_data.COLOURS.values()), np.float64)
  colour = np.argmin(
      ((mean_colour[:, None] - palette[None]) ** 2).sum(-1), axis=1)
  rows = (np.arange(height) + 0.5)[None, :, None]
  cols = (np.arange(width) + 0.5)[None, None, :]
  centroid = np.stack([(foreground * rows).sum((1, 2)),
                       (foreground * cols).sum((1, 2))], axis=1) / safe
  # Centre of pixel floor(f S), as datasets.shapes.centre_pixel places it.
  grid = np.asarray([[np.floor(fy * height) + 0.5, np.floor(fx * width) + 0.5]
                     for fy, fx in shapes_data.POSITIONS.values()])
  position = np.argmin(((centroid[:, None] - grid[None]) ** 2).sum(-1), axis=1)
  empty = counts == 0
  return {'colour': np.where(empty, -1, colour).astype(np.int64),
          'position': np.where(empty, -1, position).astype(np.int64)}


def prompt_accuracy(images: np.ndarray, factors: Mapping[str, Any],
                    classifier: Any = None) -> dict[str, float]:
  """Fractions of images that show what their prompts asked for.

  Args:
    images: uint8 [N, H, W, 3] generated images.
    factors: integer ids [N] under 'shape', 'colour', 'position' (dataset
      order; from `parse_caption` of each prompt, or the dataset's labels).
    classifier: the shapes classifier (evaluation.classifier.load_or_train
      ('shapes/<size>')) or anything with `predict_proba(images) -> [N, C]` and
      `class_names`; it predicts the shape. None skips the shape.

  Returns:
    'shape_accuracy' (classifier argmax == prompted shape; only with a
    classifier), 'colour_accuracy', 'position_accuracy' (read off the pixels,
    `read_colour_and_position`), and 'all_accuracy' (every measured factor right).
  """
  images = np.asarray(images)
  n = images.shape[0]
  for key in ('shape', 'colour', 'position'):
    if key not in factors or np.shape(factors[key]) != (n,):
      raise ValueError(f"factors[{key!r}] must be integer ids of shape ({n},); "
                       f'got keys {sorted(factors)}.')
  read = read_colour_and_position(images)
  correct = {
      'colour': read['colour'] == np.asarray(factors['colour']),
      'position': read['position'] == np.asarray(factors['position']),
  }
  if classifier is not None:
    names = tuple(classifier.class_names)
    if names != tuple(shapes_data.SHAPES):
      raise ValueError(f'The classifier predicts {names}, not the shapes '
                       f'{shapes_data.SHAPES}: load the shapes classifier.')
    predicted = np.argmax(np.asarray(classifier.predict_proba(images)), axis=1)
    correct['shape'] = predicted == np.asarray(factors['shape'])
  out = {f'{key}_accuracy': float(np.mean(value)) for key, value in correct.items()}
  out['all_accuracy'] = float(np.mean(np.all(np.stack(list(correct.values())), 0)))
  return out
