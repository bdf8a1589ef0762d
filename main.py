"""Entry point: flags -> config -> one call into train/: train, eval or sample.

  python main.py --config=configs/ddpm_digits.py --workdir=/tmp/ddpm_digits
  python main.py --config=configs/ddpm_cifar.py --workdir=W --mode=eval
  python main.py --config=configs/ddpm_cifar.py --workdir=W --mode=eval_watch
  python main.py --config=configs/ddpm_cifar.py --workdir=W --mode=sample \\
      --config.training.batch_size=64 --config.data.data_dir=/data/tfds

Conditional sampling and editing (DDPM family; outputs in workdir/edits/):
  python main.py --config=configs/ddpm_shapes_text.py --workdir=W --mode=sample \
      --prompt="a blue square at bottom right" --guidance=2
  python main.py --config=configs/guided_ddpm_digits.py --workdir=W --mode=sample --label=3
  python main.py --config=configs/ddpm_digits.py --workdir=W --mode=sample \
      --edit=inpaint --input=digit.png --mask=center
  python main.py --config=configs/sr3_digits.py --workdir=W --mode=sample \
      --edit=superres --input=low_res_4x4.png
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only a library here

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import bases  # noqa: E402
from sampling.edit_options import EDIT_DEFAULTS as _DEFAULTS, EDIT_KINDS  # noqa: E402
from train import distributed, user_errors, workdir_lock  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/ddpm_cifar.py; any field "
    "can be overridden with --config.<field>=<value>.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples; "
                    "training resumes from the newest checkpoint in it.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "eval_watch", "sample"],
                  "train; eval (the newest checkpoint); eval_watch (every checkpoint, "
                  "beside a training job, until the last); sample.")
# --mode=sample options: one condition, or an edit of the images in --input.
flags.DEFINE_enum("edit", None, list(EDIT_KINDS),
                  "Edit the --input images instead of sampling (DDPM family).")
flags.DEFINE_string("input", None, "Images to edit: a PNG/JPEG, or an .npz whose arr_0 "
                    "holds uint8 [N, H, W, C] (.npy: the array).")
flags.DEFINE_string("input_b", None, "--edit=interpolate: the second image of each pair.")
flags.DEFINE_string("mask", _DEFAULTS["mask"], "--edit=inpaint: center|left|right|top|"
                    "bottom (the region to fill) or a mask image (white = keep, black = "
                    "fill).")
flags.DEFINE_float("strength", _DEFAULTS["strength"], "--edit=sdedit: noise level t0 in "
                   "[0, 1] (0 returns the input, 1 ignores it).")
flags.DEFINE_integer("num_resample", _DEFAULTS["num_resample"], "--edit=inpaint|colorize: "
                     "RePaint resampling per step (1 = none).")
flags.DEFINE_integer("num_points", _DEFAULTS["num_points"], "--edit=interpolate: images "
                     "per pair, ends included.")
flags.DEFINE_integer("ddim_steps", _DEFAULTS["ddim_steps"], "--edit=interpolate: DDIM "
                     "inversion/decoding steps.")
flags.DEFINE_integer("fixed_point_iterations", _DEFAULTS["fixed_point_iterations"],
                     "--edit=interpolate: fixed-point iterations per DDIM inversion step "
                     "(more exact round trips).")
flags.DEFINE_string("prompt", None, "A caption for a text-conditioned model, e.g. 'a blue "
                    "square at bottom right'; 'all' cycles through every caption. On "
                    "shapes the samples' prompt accuracy is written too.")
flags.DEFINE_integer("label", None, "A class for a class-conditional model.")
flags.DEFINE_integer("num_samples", None, "Images for --prompt/--label (default 64; "
                     "--prompt=all: 216).")
flags.DEFINE_float("guidance", None, "Classifier-free guidance weight w (overrides "
                   "config.guidance.weight; 0 = plain conditional sampling).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a "
                    "multi-process job (auto-detected on SLURM, Open MPI, TPU pods).")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process job.")
flags.DEFINE_integer("process_id", None, "This process's index in the job.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
# Every edit option but shape_classifier is a flag of the same name.
_EDIT_FLAGS = tuple(name for name in _DEFAULTS if name != "shape_classifier")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  user_errors.check_workdir(FLAGS.workdir)
  distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  config = FLAGS.config
  if FLAGS.guidance is not None:
    if "guidance" not in config:
      raise app.UsageError(f"--guidance: config.model.family={config.model.family!r} has "
                           "no classifier-free guidance (config.guidance).")
    config.guidance.weight = FLAGS.guidance
  options = {name: FLAGS[name].value for name in _EDIT_FLAGS}
  conditioned = any(options[k] is not None for k in ("edit", "prompt", "label"))
  if conditioned and FLAGS.mode != "sample":
    raise app.UsageError("--edit, --prompt and --label go with --mode=sample.")
  # One writer per kind of output (train/workdir_lock.py); eval_watch writes eval/.
  kind = "edit" if conditioned else {"eval_watch": "eval"}.get(FLAGS.mode, FLAGS.mode)
  with workdir_lock.acquire(FLAGS.workdir, kind):   # held: a one-line UserError
    _run_mode(config, conditioned, options)


def _run_mode(config, conditioned: bool, options) -> None:
  # Imported only now, under the lock: TensorFlow, the datasets and the families take
  # 10-30 s to import, and a second writer should fail within seconds, before them.
  from train import edit_mode as edit_lib  # pylint: disable=g-import-not-at-top
  from train import loop, modes  # pylint: disable=g-import-not-at-top
  if FLAGS.mode == "sample" and conditioned:
    edit_lib.edit(config, FLAGS.workdir, options)
    return
  if FLAGS.mode == "train":
    loop.train_and_evaluate(config, FLAGS.workdir,
                            defaults=bases.base_config(config.model.family))
    return
  run = {"eval": modes.evaluate, "eval_watch": modes.evaluate_continuously,
         "sample": modes.sample}[FLAGS.mode]
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  user_errors.run_main(main)   # errors a user can cause: one line, exit status 2
