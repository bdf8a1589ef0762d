"""Text conditioning networks for caption tokens (datasets/captions.py makes them).

- `TextEncoder`: a small pre-LayerNorm Transformer over the tokens, masked
  mean-pooled and projected to one vector per caption, which is added to the
  U-Net's time embedding (as the class embedding is), trained jointly with the
  diffusion model; optionally also per-token features for cross-attention.
- `TextConditioned` wires an encoder to a network that takes `cond_embedding`.

The vocabulary size and the longest caption are the tokenizer's and are passed
in; the networks know no dataset.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


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

  `vocab_size`, `max_length` and `pad_id` are the tokenizer's (for `shapes`:
  datasets/captions.py's VOCAB_SIZE, MAX_CAPTION_TOKENS and PAD_ID).
  """
  out_dim: int  # = the U-Net's time-embedding width, 4 * ch
  vocab_size: int
  max_length: int  # the longest caption, in tokens (the position table's size)
  width: int = 64  # token embedding width
  num_layers: int = 2
  num_heads: int = 4
  pad_id: int = 0   # tokens equal to it are padding: not attended to, not pooled
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
    mask = tokens != self.pad_id  # [B, L]
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
