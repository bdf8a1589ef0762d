"""Entry point: flags -> config -> one call into train/: train, eval or sample.

  python main.py --config=configs/ddpm_digits.py --workdir=/tmp/ddpm_digits
  python main.py --config=configs/ddpm_cifar.py --workdir=W --mode=eval
  python main.py --config=configs/ddpm_cifar.py --workdir=W --mode=eval_watch
  python main.py --config=configs/ddpm_cifar.py --workdir=W --mode=sample \\
      --config.training.batch_size=64 --config.data.data_dir=/data/tfds
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only a library here

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from train import distributed, loop  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/ddpm_cifar.py; any field "
    "can be overridden with --config.<field>=<value>.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples; "
                    "training resumes from the newest checkpoint in it.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "eval_watch", "sample"],
                  "train; eval (the newest checkpoint); eval_watch (every checkpoint, "
                  "beside a training job, until the last); sample.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a "
                    "multi-process job (auto-detected on SLURM, Open MPI, TPU pods).")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process job.")
flags.DEFINE_integer("process_id", None, "This process's index in the job.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  run = {"train": loop.train_and_evaluate, "eval": loop.evaluate,
         "eval_watch": loop.evaluate_continuously, "sample": loop.sample}[FLAGS.mode]
  run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
