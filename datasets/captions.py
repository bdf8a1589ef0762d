"""Captions of the `shapes` dataset as token ids: vocabulary, tokenizer, parser.

A word-level tokenizer over the closed vocabulary of datasets/shapes.py
("a {colour} {shape} at {position}"); id 0 is padding, and an all-padding row
is the null caption of classifier-free guidance. models/text_encoder.py encodes
the ids; evaluation/prompt_accuracy.py scores images against parsed captions.
"""
from __future__ import annotations

from typing import Sequence

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
