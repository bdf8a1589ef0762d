"""The DDPM family's base config: every field train/ddpm.py reads, each documented.

Denoising diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") with
the Improved DDPM additions (Nichol & Dhariwal 2021: learned variances, L_hybrid and
L_vlb, the cosine schedule, importance-sampled and respaced timesteps), classifier-free
guidance (Ho & Salimans 2022), caption conditioning and SR3 super-resolution (Saharia
et al. 2021). This is configs/default.py plus the family's own fields: the U-Net
(config.model), the forward process and objective (config.diffusion), the samplers
(config.sampling), the chunking of the bound (config.eval.vlb_timestep_chunk) and the
conditioning sections (config.guidance, config.text, config.superres). Experiment
configs (ddpm_cifar.py, iddpm_cifar.py, ...) start from it and set what their paper
sets; the objective, sampler and conditioning default to a plain unconditional DDPM.

On its own it is a small DDPM on the embedded 8x8 `digits` (configs/ddpm_digits.py is
this config under its own name): a smaller U-Net and T=250, trained on a CPU in
minutes. `:runlocal` is a seconds-long smoke test.

  python main.py --config=configs/ddpm_base.py --workdir=/tmp/ddpm_base
  python main.py --config=configs/ddpm_base.py:runlocal --workdir=/tmp/ddpm_smoke
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import config_args
from configs import default


def unet_fields(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the fields of the DDPM U-Net (models/unet.py) shared by the families that
  build it, at the small digits network; a family's config then sets its own sizes.

  The DDPM-only fields (attention heads, scale-shift norm) are set by get_config().
  """
  # DDPM U-Net (Ho et al. 2020, appendix B; CIFAR-10: ch=128, ch_mult (1,2,2,2),
  # attention at 16x16, dropout 0.1, 32 groups).
  model.ch = 32                       # base channel count
  model.ch_mult = (1, 2)              # channel multiplier per resolution level
  model.num_res_blocks = 2            # residual blocks per level
  model.attn_resolutions = (4,)       # resolutions (pixels) with self-attention
  model.dropout = 0.0
  model.resamp_with_conv = True       # conv (not pooling) in up/down-sampling
  model.num_groups = 8                # GroupNorm groups (must divide every width)
  model.conditional = False           # class-conditional (label embedding)
  model.dtype = "float32"             # compute dtype: float32 or bfloat16
  model.fused_attention = False       # jax.nn.dot_product_attention (U-Net attention)
  model.remat = False                 # recompute U-Net ResNet blocks in backward (memory)
  model.coordinate_channels = False   # U-Net input gets (row, col) channels (CoordConv)
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/ddpm_base.py")
  config = default.get_config()
  config.name = "ddpm_base"

  # Data: default.py's embedded `digits` at its native 8x8, without flips (digits are
  # not mirror-symmetric).

  # --------------------------------------------------------------- model
  model = config.model
  model.family = "ddpm"
  unet_fields(model)
  model.num_heads = 1                 # attention heads (Improved DDPM: 4)
  model.scale_shift_norm = False      # timestep scales/shifts the 2nd norm (Improved DDPM)
  # Where Improved DDPM's released U-Net differs from Ho et al.'s (models/unet.py):
  model.timestep_embedding = "ddpm"   # ddpm (sin first) | improved_diffusion (cos 1st)
  model.norm_epsilon = 1e-6           # GroupNorm epsilon (TF's; PyTorch's is 1e-5)
  model.downsample_padding = "same"   # strided conv: same (TF: (0, 1)) | symmetric

  # ----------------------------------------------------------- diffusion
  config.diffusion = diffusion = ml_collections.ConfigDict()
  # T (Ho et al.: 1000). T=250 with the paper's linear schedule stretched to keep the
  # same total noise (beta_T * T constant): sampling and the T-term bound cost a
  # quarter of T=1000.
  diffusion.num_timesteps = 250
  diffusion.beta_schedule = "linear"  # linear | quad | const | jsd | cosine
  diffusion.beta_start = 4e-4         # Ho et al. at T=1000: 1e-4 to 0.02
  diffusion.beta_end = 0.08
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
  config.optim.learning_rate = 1e-3   # Ho et al.: 2e-4 with 5000 warm-up steps
  config.optim.warmup_steps = 200
  config.optim.ema_decay = 0.999

  # ------------------------------------------------------------- training
  training = config.training
  training.batch_size = 64
  training.num_train_steps = 2500
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 1250

  # ------------------------------------------------------------- sampling
  sampling = config.sampling
  sampling.method = "ancestral"       # ancestral (Ho et al. Alg. 2) | ddim
  sampling.ddim_steps = 50            # DDIM only: number of steps
  sampling.ddim_eta = 0.0             # DDIM only: 0 deterministic, 1 DDPM-like
  sampling.ddim_spacing = "uniform"   # DDIM only: uniform | quadratic
  # K respaced steps (Nichol & Dhariwal sec. 4) for ancestral and DDIM sampling, which
  # then ignores ddim_steps/ddim_spacing; None = all T steps (ancestral) / ddim_steps.
  sampling.num_steps = placeholder(int)
  sampling.respacing = "uniform"      # uniform | section counts such as "10,10,5"
  sampling.clip_denoised = True       # clip predicted x0 to [-1, 1]

  # ----------------------------------------------------------------- eval
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the whole test split (355) in one padded batch
  # Timesteps per compiled chunk of the variational bound (memory vs speed).
  config.eval.vlb_timestep_chunk = 25

  # ---------------------------------------------- classifier-free guidance
  # Ho & Salimans 2022 (with a condition: model.conditional or text.enabled). One
  # network learns p(x | c) and p(x) by training on the null condition (label
  # num_classes / the all-padding caption) at rate p_uncond.
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

  # ---------------------------------------------------- SR3 super-resolution
  # Saharia et al. 2021: the U-Net sees [x_t, upsampled low-res image] (2C channels)
  # and learns p(x | low-res); the low-res input is the box-downsampled image.
  config.superres = superres = ml_collections.ConfigDict()
  superres.factor = 0                 # low-res side = image side / factor; 0 = no SR3
  superres.upsample_method = "bicubic"  # nearest | bilinear | bicubic (SR3: bicubic)

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config)
    config.diffusion.num_timesteps = 20
    config.eval.vlb_timestep_chunk = 10
  return config
