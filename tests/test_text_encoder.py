"""Tests for models/text_encoder.py: the caption encoder and TextConditioned."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datasets import captions
from models import text_encoder as te


def _encoder(**fields):
  """A TextEncoder over the shapes tokenizer's vocabulary (datasets/captions.py)."""
  fields = dict(dict(vocab_size=captions.VOCAB_SIZE,
                     max_length=captions.MAX_CAPTION_TOKENS), **fields)
  return te.TextEncoder(**fields)


def test_encoder_takes_the_tokenizer_from_its_caller():
  """The networks know no dataset: vocabulary size and caption length are passed
  in, and the padding id they mask is the tokenizer's."""
  with pytest.raises(TypeError, match='vocab_size'):
    te.TextEncoder(out_dim=8)  # pylint: disable=no-value-for-parameter
  assert te.TextEncoder(out_dim=8, vocab_size=3, max_length=2).pad_id == \
      captions.PAD_ID


@pytest.fixture(scope='module')
def encoder_and_params():
  encoder = _encoder(out_dim=16, width=16, num_layers=1, num_heads=2, max_length=8)
  tokens = jnp.asarray(captions.tokenize(['a red circle at top left'], 8))
  params = jax.jit(encoder.init)(jax.random.key(0), tokens)['params']
  return encoder, params


def test_encoder_output_ignores_padding(encoder_and_params, fast_compile):
  encoder, params = encoder_and_params
  apply = jax.jit(lambda tokens: encoder.apply({'params': params}, tokens))
  texts = ['a red circle at top left', 'a cyan cross at center']
  short, long = apply(captions.tokenize(texts, 6)), apply(captions.tokenize(texts, 8))
  assert short.shape == (2, 16)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)
  # A different word gives a different vector; the null caption a finite constant.
  other = apply(captions.tokenize(['a blue circle at top left', ''], 6))
  assert np.abs(np.asarray(other[0] - short[0])).max() > 1e-4
  null = np.asarray(apply(captions.null_tokens(2, 6)))
  assert np.all(np.isfinite(null)) and np.allclose(null, null[:1])
  np.testing.assert_allclose(other[1], null[0], rtol=1e-6)


def test_encoder_gradient_skips_padding_and_absent_words(encoder_and_params,
                                                        fast_compile):
  encoder, params = encoder_and_params
  tokens = jnp.asarray(
      captions.tokenize(['a red circle at top left', 'a cyan square at center'], 8))

  def loss(p):
    return jnp.sum(encoder.apply({'params': p}, tokens) ** 2)

  grad = np.asarray(jax.jit(jax.grad(loss))(params)['token_embed']['embedding'])
  used = set(np.asarray(tokens).ravel()) - {captions.PAD_ID}
  row_norms = np.abs(grad).sum(axis=1)
  for word_id in range(captions.VOCAB_SIZE):
    if word_id in used:
      assert row_norms[word_id] > 0, captions.VOCABULARY[word_id]
    else:  # padding and words absent from the batch must not affect the output
      assert row_norms[word_id] == 0, captions.VOCABULARY[word_id]


def test_text_conditioned_trains_encoder_and_network_jointly(fast_compile):
  class StubNetwork(nn.Module):
    @nn.compact
    def __call__(self, x, t, *, cond_embedding, train):
      del train
      h = nn.Dense(x.shape[-1])(cond_embedding)
      return x * t[:, None] + h

  model = te.TextConditioned(network=StubNetwork(),
                             encoder=_encoder(out_dim=8, width=8, num_layers=1,
                                              num_heads=2))
  x, t = jnp.ones((2, 3)), jnp.ones((2,))
  tokens = jnp.asarray(captions.tokenize(['a red circle at top left', '']))
  params = jax.jit(lambda k: model.init(k, x, t, tokens, train=True))(
      jax.random.key(0))['params']
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({'params': p}, x, t, tokens, train=True) ** 2)))(params)
  assert set(grads) == {'network', 'encoder'}
  assert np.abs(np.asarray(grads['encoder']['out']['kernel'])).max() > 0


def test_encoder_context_for_cross_attention(fast_compile):
  """context_dim > 0 adds per-token features and the real-token mask; the pooled
  vector is the same function of the shared parameters as without it."""
  encoder = _encoder(out_dim=16, width=16, num_layers=1, num_heads=2, context_dim=12)
  tokens = jnp.asarray(captions.tokenize(['a red circle at top left', '']))
  params = jax.jit(encoder.init)(jax.random.key(0), tokens)['params']
  vector, context, mask = jax.jit(lambda p: encoder.apply({'params': p}, tokens))(params)
  assert vector.shape == (2, 16) and context.shape == (2, tokens.shape[1], 12)
  np.testing.assert_array_equal(mask, np.asarray(tokens) != captions.PAD_ID)
  assert not np.asarray(mask[1]).any()   # the null caption: no token to attend to
  plain = _encoder(out_dim=16, width=16, num_layers=1, num_heads=2)
  shared = {k: v for k, v in params.items() if 'context' not in k}
  np.testing.assert_allclose(plain.apply({'params': shared}, tokens), vector,
                             rtol=1e-6, atol=1e-6)

  class StubNetwork(nn.Module):
    @nn.compact
    def __call__(self, x, t, *, cond_embedding, context, context_mask, train):
      del t, train
      pooled = jnp.sum(context * context_mask[..., None], axis=1)
      return x + nn.Dense(x.shape[-1])(cond_embedding) + nn.Dense(x.shape[-1])(pooled)

  model = te.TextConditioned(network=StubNetwork(), encoder=encoder)
  x, t = jnp.ones((2, 3)), jnp.ones((2,))
  model_params = jax.jit(lambda k: model.init(k, x, t, tokens, train=True))(
      jax.random.key(1))['params']
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({'params': p}, x, t, tokens, train=True) ** 2)))(model_params)
  assert np.abs(np.asarray(grads['encoder']['context']['kernel'])).max() > 0


def test_encoder_rejects_bad_tokens(encoder_and_params):
  encoder, params = encoder_and_params
  with pytest.raises(ValueError, match='max_length'):
    encoder.apply({'params': params}, jnp.zeros((1, 9), jnp.int32))
  with pytest.raises(ValueError, match='integer ids'):
    encoder.apply({'params': params}, jnp.zeros((1, 6), jnp.float32))
