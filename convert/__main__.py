"""Command line: a published checkpoint -> a workdir that main.py evaluates and samples.

  huggingface-cli download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32
  python -m convert --from=diffusers --source=ddpm-cifar10-32 \\
      --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar_published
  python main.py --config=configs/ddpm_cifar.py --workdir=runs/ddpm_cifar_published \\
      --mode=eval

Any --config.<field>=<value> override applies as in main.py; the workdir's config.json
records the config, so later main.py runs must use the same one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import bases  # noqa: E402
from convert import workdir as workdir_lib  # noqa: E402
from train import user_errors  # noqa: E402


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: list[str] | None = None) -> None:
  """The command's flags, on `flag_values` (tests pass their own, beside main.py's);
  the --config.<field> overrides are read from `argv` (default sys.argv)."""
  config_flags.DEFINE_config_file(
      "config", None, "The experiment config the weights belong to, e.g. "
      "configs/ddpm_cifar.py (its --config.<field> overrides work).", lock_config=True,
      flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_enum("from", None, sorted(workdir_lib.FORMATS), "The source's format: " +
                    "; ".join(f"{name}: {form.description}"
                              for name, form in sorted(workdir_lib.FORMATS.items())) + ".",
                    flag_values=flag_values)
  flags.DEFINE_string("source", None, "The downloaded file or folder, as --from names.",
                      flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "A new workdir for the checkpoint.",
                      flag_values=flag_values)
  flags.DEFINE_integer("step", 0, "The step the checkpoint is saved at.",
                       flag_values=flag_values)
  for name in ("config", "from", "source", "workdir"):
    flags.mark_flag_as_required(name, flag_values=flag_values)


def run(flag_values: flags.FlagValues) -> dict:
  config = flag_values.config
  return workdir_lib.convert_to_workdir(
      config, flag_values.workdir, flag_values.source,
      source_format=flag_values["from"].value, step=flag_values.step,
      defaults=bases.base_config(config.model.family))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  user_errors.check_workdir(flags.FLAGS.workdir)
  metadata = run(flags.FLAGS)
  source = metadata["converted_from"]
  print(f"Converted {source['num_tensors']} tensors of {source['source']} into "
        f"{flags.FLAGS.workdir} (step {metadata['step']}).")


if __name__ == "__main__":
  define_flags()
  user_errors.run_main(main)   # errors a user can cause: one line, exit status 2
