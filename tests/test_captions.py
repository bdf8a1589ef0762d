"""Tests for datasets/captions.py: the shapes vocabulary, tokenizer and parser."""
import itertools

import jax
import numpy as np
import pytest

from datasets import captions
from datasets import shapes as shapes_data

ALL_FACTORS = list(itertools.product(
    range(len(shapes_data.SHAPES)), range(len(shapes_data.COLOURS)),
    range(len(shapes_data.POSITIONS))))


def _caption(s, c, p):
  return shapes_data.caption(shapes_data.SHAPES[s], tuple(shapes_data.COLOURS)[c],
                             tuple(shapes_data.POSITIONS)[p])


def test_vocabulary_covers_the_dataset_words():
  assert captions.VOCABULARY[captions.PAD_ID] == captions.PAD_TOKEN
  words = {'a', 'at', *shapes_data.SHAPES, *shapes_data.COLOURS,
           *' '.join(shapes_data.POSITIONS).split()}
  assert set(captions.VOCABULARY[1:]) == words
  assert len(set(captions.VOCABULARY)) == len(captions.VOCABULARY)
  assert captions.MAX_CAPTION_TOKENS == 6  # "a magenta triangle at bottom center"


def test_every_dataset_caption_round_trips():
  # The captions the tfds builder writes for its train split, plus every combination.
  factors = shapes_data.sample_factors('train', shapes_data.SPLIT_SIZES['train'])
  texts = {_caption(s, c, p) for s, c, p in zip(
      factors['shape'], factors['colour'], factors['position'])}
  texts |= {_caption(*f) for f in ALL_FACTORS}
  texts = sorted(texts)
  assert len(texts) == len(ALL_FACTORS) == 216
  tokens = captions.tokenize(texts)
  assert tokens.shape == (216, captions.MAX_CAPTION_TOKENS) and tokens.dtype == np.int32
  assert captions.detokenize(tokens) == texts
  assert len({tuple(row) for row in tokens}) == 216  # distinct captions, distinct ids


def test_tokenize_rejects_unknown_and_long_captions():
  with pytest.raises(ValueError, match=r"Unknown word.*'purple'.*circle"):
    captions.tokenize('a purple circle at top left')
  with pytest.raises(ValueError, match='Unknown word'):
    captions.tokenize('a <pad> circle')
  with pytest.raises(ValueError, match='at most 6'):
    captions.tokenize('a red red red red red red')


def test_null_caption_is_all_padding():
  np.testing.assert_array_equal(captions.tokenize(['', '']), captions.null_tokens(2))
  assert np.all(captions.null_tokens(3) == captions.PAD_ID)
  assert captions.detokenize(captions.null_tokens(1)) == ['']


def test_tokens_from_factors_matches_tokenize():
  f = np.asarray(ALL_FACTORS)
  from_table = jax.jit(captions.tokens_from_factors)(f[:, 0], f[:, 1], f[:, 2])
  np.testing.assert_array_equal(
      from_table, captions.tokenize([_caption(*row) for row in ALL_FACTORS]))


def test_parse_caption_inverts_caption():
  for s, c, p in ALL_FACTORS:
    assert captions.parse_caption(_caption(s, c, p)) == {'shape': s, 'colour': c,
                                                   'position': p}
  with pytest.raises(ValueError, match='does not follow'):
    captions.parse_caption('a red circle')
