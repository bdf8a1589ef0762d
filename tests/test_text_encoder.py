"""Tests for models/text_encoder.py: shapes tokenizer, text encoder, prompt accuracy."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datasets import shapes as shapes_data
from models import text_encoder as te

ALL_FACTORS = list(itertools.product(
    range(len(shapes_data.SHAPES)), range(len(shapes_data.COLOURS)),
    range(len(shapes_data.POSITIONS))))


def _caption(s, c, p):
  return shapes_data.caption(shapes_data.SHAPES[s], tuple(shapes_data.COLOURS)[c],
                             tuple(shapes_data.POSITIONS)[p])


# ------------------------------------------------------------------ tokenizer
def test_vocabulary_covers_the_dataset_words():
  assert te.VOCABULARY[te.PAD_ID] == te.PAD_TOKEN
  words = {'a', 'at', *shapes_data.SHAPES, *shapes_data.COLOURS,
           *' '.join(shapes_data.POSITIONS).split()}
  assert set(te.VOCABULARY[1:]) == words
  assert len(set(te.VOCABULARY)) == len(te.VOCABULARY)
  assert te.MAX_CAPTION_TOKENS == 6  # "a magenta triangle at bottom center"


def test_every_dataset_caption_round_trips():
  # The captions the tfds builder writes for its train split, plus every combination.
  factors = shapes_data.sample_factors('train', shapes_data.SPLIT_SIZES['train'])
  captions = {_caption(s, c, p) for s, c, p in zip(
      factors['shape'], factors['colour'], factors['position'])}
  captions |= {_caption(*f) for f in ALL_FACTORS}
  captions = sorted(captions)
  assert len(captions) == len(ALL_FACTORS) == 216
  tokens = te.tokenize(captions)
  assert tokens.shape == (216, te.MAX_CAPTION_TOKENS) and tokens.dtype == np.int32
  assert te.detokenize(tokens) == captions
  assert len({tuple(row) for row in tokens}) == 216  # distinct captions, distinct ids


def test_tokenize_rejects_unknown_and_long_captions():
  with pytest.raises(ValueError, match=r"Unknown word.*'purple'.*circle"):
    te.tokenize('a purple circle at top left')
  with pytest.raises(ValueError, match='Unknown word'):
    te.tokenize('a <pad> circle')
  with pytest.raises(ValueError, match='at most 6'):
    te.tokenize('a red red red red red red')


def test_null_caption_is_all_padding():
  np.testing.assert_array_equal(te.tokenize(['', '']), te.null_tokens(2))
  assert np.all(te.null_tokens(3) == te.PAD_ID)
  assert te.detokenize(te.null_tokens(1)) == ['']


def test_tokens_from_factors_matches_tokenize():
  f = np.asarray(ALL_FACTORS)
  from_table = jax.jit(te.tokens_from_factors)(f[:, 0], f[:, 1], f[:, 2])
  np.testing.assert_array_equal(
      from_table, te.tokenize([_caption(*row) for row in ALL_FACTORS]))


def test_parse_caption_inverts_caption():
  for s, c, p in ALL_FACTORS:
    assert te.parse_caption(_caption(s, c, p)) == {'shape': s, 'colour': c,
                                                   'position': p}
  with pytest.raises(ValueError, match='does not follow'):
    te.parse_caption('a red circle')


# -------------------------------------------------------------------- encoder
@pytest.fixture(scope='module')
def encoder_and_params():
  encoder = te.TextEncoder(out_dim=16, width=16, num_layers=1, num_heads=2,
                           max_length=8)
  tokens = jnp.asarray(te.tokenize(['a red circle at top left'], 8))
  params = jax.jit(encoder.init)(jax.random.key(0), tokens)['params']
  return encoder, params


def test_encoder_output_ignores_padding(encoder_and_params, fast_compile):
  encoder, params = encoder_and_params
  apply = jax.jit(lambda tokens: encoder.apply({'params': params}, tokens))
  captions = ['a red circle at top left', 'a cyan cross at center']
  short, long = apply(te.tokenize(captions, 6)), apply(te.tokenize(captions, 8))
  assert short.shape == (2, 16)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)
  # A different word gives a different vector; the null caption a finite constant.
  other = apply(te.tokenize(['a blue circle at top left', ''], 6))
  assert np.abs(np.asarray(other[0] - short[0])).max() > 1e-4
  null = np.asarray(apply(te.null_tokens(2, 6)))
  assert np.all(np.isfinite(null)) and np.allclose(null, null[:1])
  np.testing.assert_allclose(other[1], null[0], rtol=1e-6)


def test_encoder_gradient_skips_padding_and_absent_words(encoder_and_params,
                                                        fast_compile):
  encoder, params = encoder_and_params
  tokens = jnp.asarray(
      te.tokenize(['a red circle at top left', 'a cyan square at center'], 8))

  def loss(p):
    return jnp.sum(encoder.apply({'params': p}, tokens) ** 2)

  grad = np.asarray(jax.jit(jax.grad(loss))(params)['token_embed']['embedding'])
  used = set(np.asarray(tokens).ravel()) - {te.PAD_ID}
  row_norms = np.abs(grad).sum(axis=1)
  for word_id in range(te.VOCAB_SIZE):
    if word_id in used:
      assert row_norms[word_id] > 0, te.VOCABULARY[word_id]
    else:  # padding and words absent from the batch must not affect the output
      assert row_norms[word_id] == 0, te.VOCABULARY[word_id]


def test_text_conditioned_trains_encoder_and_network_jointly(fast_compile):
  class StubNetwork(nn.Module):
    @nn.compact
    def __call__(self, x, t, *, cond_embedding, train):
      del train
      h = nn.Dense(x.shape[-1])(cond_embedding)
      return x * t[:, None] + h

  model = te.TextConditioned(network=StubNetwork(),
                             encoder=te.TextEncoder(out_dim=8, width=8, num_layers=1,
                                                    num_heads=2))
  x, t = jnp.ones((2, 3)), jnp.ones((2,))
  tokens = jnp.asarray(te.tokenize(['a red circle at top left', '']))
  params = jax.jit(lambda k: model.init(k, x, t, tokens, train=True))(
      jax.random.key(0))['params']
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({'params': p}, x, t, tokens, train=True) ** 2)))(params)
  assert set(grads) == {'network', 'encoder'}
  assert np.abs(np.asarray(grads['encoder']['out']['kernel'])).max() > 0


def test_encoder_context_for_cross_attention(fast_compile):
  """context_dim > 0 adds per-token features and the real-token mask; the pooled
  vector is the same function of the shared parameters as without it."""
  encoder = te.TextEncoder(out_dim=16, width=16, num_layers=1, num_heads=2,
                           context_dim=12)
  tokens = jnp.asarray(te.tokenize(['a red circle at top left', '']))
  params = jax.jit(encoder.init)(jax.random.key(0), tokens)['params']
  vector, context, mask = jax.jit(lambda p: encoder.apply({'params': p}, tokens))(params)
  assert vector.shape == (2, 16) and context.shape == (2, tokens.shape[1], 12)
  np.testing.assert_array_equal(mask, np.asarray(tokens) != te.PAD_ID)
  assert not np.asarray(mask[1]).any()   # the null caption: no token to attend to
  plain = te.TextEncoder(out_dim=16, width=16, num_layers=1, num_heads=2)
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


# ------------------------------------------------------------ prompt accuracy
def _rendered(image_size, seed=0):
  rng = np.random.default_rng(seed)
  images = [shapes_data.render(
      shape=shapes_data.SHAPES[s], colour=tuple(shapes_data.COLOURS)[c],
      position=tuple(shapes_data.POSITIONS)[p],
      half_size=rng.uniform(*shapes_data.HALF_SIZE_RANGE) * image_size,
      background_level=int(rng.integers(0, shapes_data.MAX_BACKGROUND_LEVEL + 1)),
      image_size=image_size) for s, c, p in ALL_FACTORS]
  f = np.asarray(ALL_FACTORS)
  return np.stack(images), {'shape': f[:, 0], 'colour': f[:, 1], 'position': f[:, 2]}


class _OracleClassifier:
  """Predicts given shapes (a stand-in for the trained shapes classifier)."""
  class_names = shapes_data.SHAPES

  def __init__(self, predictions):
    self.predictions = predictions

  def predict_proba(self, images):
    assert images.dtype == np.uint8
    return np.eye(len(self.class_names))[self.predictions]


@pytest.mark.parametrize('image_size', [16, 32])
def test_prompt_accuracy_on_dataset_renderings(image_size):
  images, factors = _rendered(image_size)
  wrong = factors['shape'].copy()
  wrong[::4] = (wrong[::4] + 1) % 4  # a quarter of the shapes misclassified
  out = te.prompt_accuracy(images, factors, _OracleClassifier(wrong))
  assert out['colour_accuracy'] == 1.0 and out['position_accuracy'] == 1.0
  assert out['shape_accuracy'] == pytest.approx(0.75)
  assert out['all_accuracy'] == pytest.approx(0.75)
  # Prompts that ask for other colours / positions are judged wrong.
  shifted = dict(factors, colour=(factors['colour'] + 1) % 6,
                 position=(factors['position'] + 1) % 9)
  out = te.prompt_accuracy(images, shifted)
  assert out['colour_accuracy'] == 0.0 and out['position_accuracy'] == 0.0
  assert 'shape_accuracy' not in out


def test_blank_images_are_wrong_and_bad_inputs_raise():
  blank = np.full((2, 16, 16, 3), 40, np.uint8)
  read = te.read_colour_and_position(blank)
  np.testing.assert_array_equal(read['colour'], [-1, -1])
  factors = {'shape': np.zeros(2, int), 'colour': np.zeros(2, int),
             'position': np.zeros(2, int)}
  assert te.prompt_accuracy(blank, factors)['all_accuracy'] == 0.0
  with pytest.raises(ValueError, match='uint8'):
    te.prompt_accuracy(blank.astype(np.float32), factors)
  with pytest.raises(ValueError, match='factors'):
    te.prompt_accuracy(blank, {'shape': np.zeros(2, int)})
  oracle = _OracleClassifier(np.zeros(2, int))
  oracle.class_names = ('zero', 'one')
  with pytest.raises(ValueError, match='shapes classifier'):
    te.prompt_accuracy(blank, factors, oracle)
