"""The config argument (`--config=configs/x.py:arg1,arg2`) and the `runlocal` smoke test.

Every experiment config takes an optional comma-separated argument. `runlocal` is
accepted by all of them: a seconds-long run on a CPU that exercises train,
checkpoint, sample and eval (the family's config then shrinks its network too).
Other arguments are the config's own variants (a paper's ablation, a loss):

  def get_config(arg: str | None = None):
    args = config_args.parse(arg, "configs/iddpm_cifar.py", choices=("vlb",))
    ...
    if "runlocal" in args:
      config_args.runlocal(config)
      config.model.ch = 8
"""

from collections.abc import Sequence

import ml_collections

RUNLOCAL = "runlocal"


def parse(arg: str | None, config_file: str, choices: Sequence[str] = (),
          exclusive: Sequence[Sequence[str]] = ()) -> tuple[str, ...]:
  """The arguments in `arg`, in order; an error names the unknown ones and the choices.

  `exclusive` lists groups of which at most one may be given (e.g. ("vp", "subvp")).
  """
  args = tuple(a.strip() for a in (arg or "").split(",") if a.strip())
  allowed = tuple(choices) + (RUNLOCAL,)
  unknown = [a for a in args if a not in allowed]
  if unknown:
    raise ValueError(f"{config_file} has no argument {', '.join(map(repr, unknown))}; "
                     f"choose from {', '.join(allowed)} (comma-separated).")
  if len(set(args)) != len(args):
    raise ValueError(f"{config_file}: an argument is repeated in {arg!r}.")
  for group in exclusive:
    given = [a for a in args if a in group]
    if len(given) > 1:
      raise ValueError(f"{config_file}: {' and '.join(given)} exclude each other.")
  return args


def runlocal(config: ml_collections.ConfigDict, *, num_train_steps: int = 20,
             every: int = 10, eval_examples: int = 32) -> ml_collections.ConfigDict:
  """The shared part of a smoke test: few steps, frequent checkpoints, tiny evals.

  Logs and checkpoints every `every` steps, samples once at the end, and evaluates on
  `eval_examples` test images and 8 samples. The family's config shrinks its network.
  """
  t = config.training
  t.num_train_steps = num_train_steps
  t.log_every_steps = every
  t.checkpoint_every_steps = every
  t.sample_every_steps = num_train_steps
  t.num_samples_in_grid = 4
  config.eval.num_samples = 8
  config.eval.num_eval_examples = eval_examples
  config.eval.batch_size = eval_examples
  return config
