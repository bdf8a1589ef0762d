"""The TrainState every family uses: everything that determines a run's future."""

from typing import Any, Callable

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


def jit_run_once(fn: Callable, **jit_kwargs) -> Callable:
  """jax.jit for a program that runs once per process (parameter initialisation).

  On CPU it is compiled without XLA's backend optimisations and without unrolling
  while loops: a network's init draws every parameter through threefry's loop, which
  unrolled and optimised made a 64k-parameter U-Net's init compile for 18 s (5 s
  like this; ddpm_cifar's 14.6 s -> 10.1 s), to run once. The draws are the same; the
  unoptimised arithmetic may round the last bit of a few values differently
  (tests/test_train_loop.py). Other backends compile it as usual.
  """
  if jax.default_backend() == "cpu":
    jit_kwargs["compiler_options"] = dict(
        xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True,
        xla_disable_hlo_passes="while-loop-unroller,simplify-while-loops")
  return jax.jit(fn, **jit_kwargs)


def leafwise(fn: Callable[[jax.Array], jax.Array], tree: Any) -> list:
  """[fn(leaf) for each leaf], read to the host once; `fn` is a jitted function.

  One small program per distinct leaf shape: a program over a whole state (params,
  two Adam moments, EMA) took seconds to compile. A sharded leaf's program holds a
  collective, so it is waited for before the next is queued: many queued at once
  deadlocked two forced CPU devices (tests/test_multidevice.py).
  """
  results = []
  for x in jax.tree.leaves(tree):
    results.append(fn(jnp.asarray(x)))
    if not getattr(getattr(x, "sharding", None), "is_fully_replicated", True):
      results[-1].block_until_ready()
  return jax.device_get(results)
