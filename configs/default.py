"""Default configuration: every field the family-agnostic spine reads, each explained.

The spine is what every family shares: data pipeline, optimizer, training loop,
checkpoints, logging, sample grids and the evaluation protocol. A family's base
config (`configs/<family>_base.py`, listed in configs/bases.py) starts from this one
and adds the fields that family reads; experiment configs start from their family's
base and set what their paper sets. tests/test_config_fields.py parses the code and
checks that each field here and in a base is read, and that every field read is
defined. Every field can be overridden from the command line:

  python main.py --config=configs/ddpm_digits.py --workdir=/tmp/w \\
      --config.training.batch_size=32 --config.data.data_dir=/data/tfds
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Name recorded in logs, eval JSON and image provenance.
  config.name = "default"
  # The one seed: every random draw (init, data order, flips, noise, sampling) is a
  # key derived from it with fold_in, so the same config and seed give the same run.
  config.seed = 42

  # ---------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  # A tfds name ("cifar10", "mnist", "celeb_a", "imagenet_resized/32", ...) or an
  # embedded dataset that needs no download ("digits", "shapes", "shapes/16").
  data.dataset = "digits"
  # Fields that may be None are typed placeholders, so that the command line can set
  # them (--config.data.image_size=16).
  # Where tfds looks for prepared datasets; None = tfds default
  # (~/tensorflow_datasets or $TFDS_DATA_DIR). Embedded datasets are prepared here.
  data.data_dir = placeholder(str)
  data.train_split = "train"
  data.eval_split = "test"
  # Square side the images are center-cropped and resized to; None keeps the size.
  data.image_size = placeholder(int)
  # Random horizontal flips of training images.
  data.random_flip = False
  # Whether a non-embedded dataset missing from data_dir may be downloaded. Off by
  # default so that an offline machine fails at once instead of hanging.
  data.download = False
  # Worker processes that read, decode and augment training batches (grain's
  # mp_prefetch), each producing whole batches. 0: threads in the training process,
  # faster for small images on a few CPU cores (benchmarks/input_pipeline.py).
  data.num_workers = 0

  # --------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  # Which family (loss, train step, sampler) drives training: see train/families.py.
  # Each family's base config (configs/<family>_base.py) sets it and adds the
  # family's own fields: the network here, its process or objective in a section of
  # its own (diffusion, sde, vdm, gan, vq, hvae).
  model.family = placeholder(str)

  # ------------------------------------------------------------ optimizer
  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"            # adam | adamw | rmsprop
  optim.learning_rate = 2e-4
  optim.warmup_steps = 5000           # linear warm-up from 0
  # What follows the warm-up, counted from its end: constant | exponential
  # (lr * lr_decay_rate**step) | piecewise (lr times the product of the
  # lr_boundary_scales of the lr_boundaries passed) | cosine / linear (to 0 over
  # lr_decay_steps).
  optim.lr_schedule = "constant"
  optim.lr_decay_rate = 1.0
  optim.lr_decay_steps = 0
  optim.lr_boundaries = ()
  optim.lr_boundary_scales = ()
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0            # only for adamw
  optim.rmsprop_decay = 0.9           # only for rmsprop: decay of the squared-gradient average
  optim.momentum = 0.0                # only for rmsprop; 0 disables
  optim.grad_clip_norm = 1.0          # global-norm clipping; 0 disables
  optim.ema_decay = 0.9999            # EMA of params used for eval and sampling

  # ------------------------------------------------------------- training
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128           # GLOBAL batch, split over all devices
  training.num_train_steps = 800_000
  training.log_every_steps = 100      # console + TensorBoard scalars
  training.checkpoint_every_steps = 5000
  training.sample_every_steps = 10_000   # PNG + TensorBoard sample grid; 0 disables
  training.num_samples_in_grid = 64   # images in the periodic sample grid
  # Train steps fused into one compiled call (lax.scan): fewer dispatches when
  # steps are short. Every *_every_steps must be a multiple of it.
  training.steps_per_call = 1
  training.keep_checkpoints = 3       # keep the last N checkpoints ...
  training.keep_checkpoint_every_steps = 0   # ... plus every K-th step (0: none)
  training.async_checkpointing = True
  # Stop with an error (never checkpointing the weights) on a NaN/Inf loss.
  training.halt_on_nonfinite = True
  # Resume a workdir whose config.json differs in fields that change the experiment
  # (model, data, optimizer...). Off: such a resume is refused, naming the fields.
  training.allow_config_change = False

  # -------------------------------------------------------------- logging
  # TensorBoard event files are always written (workdir/tensorboard/).
  config.logging = logging = ml_collections.ConfigDict()
  # Weights & Biases beside TensorBoard (`pip install wandb==0.31.0`, then `wandb
  # login`, or WANDB_MODE=offline). Off: wandb is never imported. The run's id is
  # kept in workdir/wandb_run_id, so a resumed training continues the same W&B run.
  logging.wandb = False
  logging.wandb_project = "generative"
  logging.wandb_entity = placeholder(str)     # team or user; None: wandb's default
  logging.wandb_run_name = placeholder(str)   # None: "<config.name> <workdir name>"
  # A jax.profiler trace (TensorBoard's profile tab, Perfetto) of the training steps
  # profile_start_step < step <= profile_start_step + profile_num_steps, written to
  # workdir/profile/. 0 steps: no trace. Start after compilation (step > 0) to see
  # the steady state.
  logging.profile_start_step = 10
  logging.profile_num_steps = 0

  # ---------------------------------------------------------- checkpoint
  config.checkpoint = checkpoint = ml_collections.ConfigDict()
  # The step that eval, sample and edit read; None = the newest. They never move a
  # checkpoint: an unreadable one is reported, and this picks another. Training
  # always resumes from the newest readable step (moving unreadable ones aside).
  checkpoint.step = placeholder(int)

  # ------------------------------------------------------------- sampling
  # Every family's sampler; the sampler's own settings are in the family's base.
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.batch_size = 256           # images per compiled sampling call
  sampling.use_ema = True             # sample (and evaluate) with the EMA parameters
  # --mode=sample also writes each sample as png/000000.png, ... beside samples.npz:
  # the folder pytorch-fid, clean-fid, torch-fidelity and EDM's fid.py read.
  sampling.png_folder = False

  # ----------------------------------------------------------------- eval
  config.eval = eval_config = ml_collections.ConfigDict()
  # Samples drawn by --mode=sample (and by --mode=eval for FID once it lands).
  eval_config.num_samples = 50_000
  eval_config.batch_size = 256        # global batch for bits/dim
  # Test images for bits/dim; None = the whole eval split.
  eval_config.num_eval_examples = placeholder(int)
  # Sample-based metrics of --mode=eval, on eval.num_samples samples (comma-separated
  # from fid, is, kid, pr, classifier_fd, class_coverage); "" = the dataset's defaults
  # (classifier_fd,class_coverage for the embedded datasets, fid,is otherwise);
  # "none" = bits/dim only. See README "Evaluation protocol".
  eval_config.sample_metrics = ""
  # Reference split for FID-style statistics (the papers: the 50k training images),
  # and how many of its images; None = the whole split.
  eval_config.reference_split = "train"
  eval_config.num_reference_examples = placeholder(int)
  # pt_inception-2015-12-05-6726825d.pth; None = $INCEPTION_WEIGHTS.
  eval_config.inception_weights = placeholder(str)
  # Caches of reference statistics and offline classifiers; None = $EVAL_STATS_DIR /
  # $EVAL_CLASSIFIER_DIR, else ~/.cache/genmodels/.
  eval_config.stats_dir = placeholder(str)
  eval_config.classifier_dir = placeholder(str)
  eval_config.feature_batch_size = 200   # images per feature-network call
  # A quick protocol for what training samples and evaluates (its sample grids and
  # its end-of-run evaluation), for a quick first run (train/modes.py quick_config);
  # --mode=eval, eval_watch and sample never use it. Unset, each keeps the full
  # protocol; the eval JSON's "evaluation_protocol" says which ran ("full" or
  # "quick: ..."). Test-set metrics on this many test images drawn at random
  # (seeded, without replacement), each mean with its standard error
  # (<metric>_stderr); None = as --mode=eval.
  eval_config.quick_num_eval_examples = placeholder(int)
  # Samples for the sample metrics; None = eval.num_samples.
  eval_config.quick_num_samples = placeholder(int)
  # Fields of config.sampling replaced for those samples and the training grids
  # ("method=ddim,ddim_steps=50"); "" = config.sampling's sampler.
  eval_config.quick_sampling = ""

  return config
