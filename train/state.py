"""The TrainState every family uses: everything that determines a run's future."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Params, EMA params, optimizer state, step and rng of one run.

  `params`, `ema_params` and `opt_state` are whatever the family needs: a diffusion
  model keeps one network's params, a GAN keeps {'generator', 'discriminator'} and an
  optimizer state for each. `model_state` holds non-trained variables (batch-norm
  statistics, spectral-norm vectors); empty for families that have none. The input
  pipeline's position is the step itself: batches are a pure function of it.
  """
  step: jax.Array                 # int32 scalar: number of updates done
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array                  # raw uint32 key; per-step keys are fold_in(rng, step)
  model_state: Any = flax.struct.field(default_factory=dict)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)

  def checkpoint_tree(self) -> dict[str, Any]:
    """The arrays that are saved (the optimizer definition is rebuilt from config)."""
    return dict(step=self.step, params=self.params, ema_params=self.ema_params,
                opt_state=self.opt_state, rng=self.rng, model_state=self.model_state)

  def replace_from_checkpoint(self, tree: dict[str, Any]) -> "TrainState":
    return self.replace(**tree)


# config.model.dtype -> the compute dtype of a family's network (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params (Polyak averaging of the weights)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def num_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
