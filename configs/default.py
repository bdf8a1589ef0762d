"""Default configuration: every field the training spine reads, each explained.

Experiment configs (`ddpm_cifar.py`, `ddpm_digits.py`, ...) import this file and
override what their paper sets. Every field can be overridden from the command line:

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

  # --------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  # Which family (loss, train step, sampler) drives training: see train/families.py.
  model.family = "ddpm"
  # DDPM U-Net (Ho et al. 2020, appendix B).
  model.ch = 64                       # base channel count
  model.ch_mult = (1, 2, 2)           # channel multiplier per resolution level
  model.num_res_blocks = 2            # residual blocks per level
  model.attn_resolutions = (8,)       # resolutions (pixels) with self-attention
  model.dropout = 0.1
  model.resamp_with_conv = True       # conv (not pooling) in up/down-sampling
  model.num_groups = 32               # GroupNorm groups
  model.num_heads = 1                 # attention heads (Improved DDPM: 4)
  model.scale_shift_norm = False      # timestep scales/shifts the 2nd norm (Improved DDPM)
  model.conditional = False           # class-conditional (label embedding)
  model.dtype = "float32"             # compute dtype: float32 or bfloat16
  model.fused_attention = False       # jax.nn.dot_product_attention (U-Net attention)
  model.remat = False                 # recompute U-Net ResNet blocks in backward (memory)
  model.coordinate_channels = False   # U-Net input gets (row, col) channels (CoordConv)

  # ----------------------------------------------------------- diffusion
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.num_timesteps = 1000      # T
  diffusion.beta_schedule = "linear"  # linear | quad | const | jsd | cosine
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  # Reverse-process variance: "fixedlarge" (sigma_t^2 = beta_t, the paper's CIFAR
  # choice), "fixedsmall" (the posterior variance beta~_t) or "learned_range" (the
  # U-Net outputs [eps, v]; log variance interpolates the two, Nichol & Dhariwal eq. 15).
  diffusion.var_type = "fixedlarge"
  # Objective: "simple" (L_simple, Ho et al. eq. 14) | "hybrid" (L_simple + vlb_weight *
  # L_vlb, Nichol & Dhariwal eq. 16, stop-gradient on the mean) | "vlb" (L_vlb alone).
  diffusion.loss = "simple"
  # What the network predicts: "eps" (Ho et al.) | "v" = sqrt(abar) eps - sqrt(1-abar) x0
  # (Salimans & Ho 2022); L_simple is then on v: eps-MSE / abar_t, more weight at low SNR.
  diffusion.prediction = "eps"
  diffusion.vlb_weight = 0.001        # lambda of L_hybrid
  # Timesteps t: "uniform" | "loss_second_moment" (p_t proportional to sqrt(E[L_t^2]),
  # Nichol & Dhariwal eq. 18; uniform until every t has loss_history_size losses).
  diffusion.timestep_sampler = "uniform"
  diffusion.loss_history_size = 10    # recent losses kept per t (loss_second_moment)
  diffusion.uniform_prob = 0.001      # uniform mixed into eq. 18, as in the paper's code
  diffusion.rescale_timesteps = False  # the network sees t * 1000 / T (Improved DDPM code)

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

  # ------------------------------------------------------------- sampling
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "ancestral"       # ancestral (Ho et al. Alg. 2) | ddim
  sampling.ddim_steps = 50            # DDIM only: number of steps
  sampling.ddim_eta = 0.0             # DDIM only: 0 deterministic, 1 DDPM-like
  sampling.ddim_spacing = "uniform"   # DDIM only: uniform | quadratic
  # K respaced steps (Nichol & Dhariwal sec. 4) for ancestral and DDIM sampling, which
  # then ignores ddim_steps/ddim_spacing; None = all T steps (ancestral) / ddim_steps.
  sampling.num_steps = placeholder(int)
  sampling.respacing = "uniform"      # uniform | section counts such as "10,10,5"
  sampling.clip_denoised = True       # clip predicted x0 to [-1, 1]
  sampling.batch_size = 256           # images per compiled sampling call
  sampling.use_ema = True

  # ----------------------------------------------------------------- eval
  config.eval = eval_config = ml_collections.ConfigDict()
  # Samples drawn by --mode=sample (and by --mode=eval for FID once it lands).
  eval_config.num_samples = 50_000
  eval_config.batch_size = 256        # global batch for bits/dim
  # Test images for bits/dim; None = the whole eval split.
  eval_config.num_eval_examples = placeholder(int)
  # Timesteps per compiled chunk of the variational bound (memory vs speed).
  eval_config.vlb_timestep_chunk = 50
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

  # ---------------------------------------------- classifier-free guidance
  # Ho & Salimans 2022 (diffusion families with a condition: model.conditional or
  # text.enabled). One network learns p(x | c) and p(x) by training on the null
  # condition (label num_classes / the all-padding caption) at rate p_uncond.
  config.guidance = guidance = ml_collections.ConfigDict()
  guidance.p_uncond = 0.0             # P(null condition) per training example; 0 = off
  # w of eq. 6 at sampling time, eps = (1 + w) eps(x, c) - w eps(x, null); 0 = the
  # plain conditional sampler (bit for bit). Needs p_uncond > 0 in training.
  guidance.weight = 0.0

  # ------------------------------------------------------ text conditioning
  # Caption conditioning on the `shapes` datasets ("a red circle at top left"): a small
  # Transformer (models/text_encoder.py) trained jointly with the U-Net; its caption
  # vector joins the time embedding. Replaces model.conditional (the class label).
  config.text = text = ml_collections.ConfigDict()
  text.enabled = False                # condition on the captions (shapes only)
  text.width = 64                     # token embedding width
  text.num_layers = 2                 # Transformer blocks
  text.num_heads = 4                  # attention heads (must divide width)
  text.cross_attention = False        # U-Net attention layers also attend to the tokens

  # --------------------------------------------- SR3 super-resolution (DDPM)
  # Saharia et al. 2021: the U-Net sees [x_t, upsampled low-res image] (2C channels)
  # and learns p(x | low-res); the low-res input is the box-downsampled image.
  config.superres = superres = ml_collections.ConfigDict()
  superres.factor = 0                 # low-res side = image side / factor; 0 = no SR3
  superres.upsample_method = "bicubic"  # nearest | bilinear | bicubic (SR3: bicubic)
  return config
