"""DDPM on LSUN Church 256x256: Ho et al. 2020, "Denoising Diffusion Probabilistic
Models".

The paper's 256x256 network and training (Appendix B, and the authors' released
scripts/run_lsun.py): T=1000, linear betas 1e-4 to 0.02; U-Net with ch=128,
ch_mult (1,1,2,2,4,4) (six resolutions, 256x256 down to 8x8), 2 residual blocks per
level, self-attention at 16x16, dropout 0, 32 groups (113,673,219 parameters, the
paper's "114 million"); Adam, learning rate 2e-5 with 5000 linear warm-up steps,
gradient clipping at norm 1, batch 64, EMA 0.9999, random horizontal flips, 1.2M steps;
sampling with sigma_t^2 = the posterior variance beta~_t ("fixedsmall": the 256x256
scripts' diffusion_utils.GaussianDiffusion, and the published google/ddpm-*-256
schedulers' variance_type fixed_small).

Paper's row (Table 3, evaluation/paper_tables.py): LSUN Church FID 7.89, on 50,000
samples with StyleGAN2's FID code against the training images (here: eval.num_samples
= 50,000 against eval.num_reference_examples = 50,000 training images). The paper gives
no bits/dim at 256x256; --mode=eval reports the bound on the 300 validation images.

Data: tfds `lsun/church_outdoor` (prepare it first, as for every main.py mode and the
converter: `tfds build lsun/church_outdoor --data_dir=DIR --file_format=array_record`),
centre-cropped to a square and resized to 256x256 (the paper's StyleGAN preparation
also crops the centre; its resize filter differs).

The published weights, converted (--from=ddpm_tf gives the raw weights to params and
the EMA weights to ema_params, which sampling uses; the diffusers upload holds the EMA
weights alone), then evaluated:

  huggingface-cli download google/ddpm-church-256 --local-dir ddpm-church-256
  python -m convert --from=diffusers --source=ddpm-church-256 \\
      --config=configs/ddpm_church256.py --workdir=runs/ddpm_church256_published
  python -m convert --from=ddpm_tf \\
      --source=diffusion_lsun_church_model/model.ckpt-4432000 \\
      --config=configs/ddpm_church256.py --workdir=runs/ddpm_church256_tf
  python main.py --config=configs/ddpm_church256.py \\
      --workdir=runs/ddpm_church256_published --mode=eval

Training from scratch:

  python main.py --config=configs/ddpm_church256.py --workdir=runs/ddpm_church256
  python main.py --config=configs/ddpm_church256.py --workdir=runs/ddpm_church256 \\
      --mode=sample

configs/ddpm_bedroom256.py, ddpm_cat256.py and ddpm_celebahq256.py are this config on
the other 256x256 datasets of the paper. `:runlocal` shrinks everything (32x32 images,
a tiny network, a few steps) for a smoke test; it reproduces nothing.
"""

from configs import config_args
from configs import ddpm_base


def ddpm_256(config_file: str, arg: str | None, *, name: str, dataset: str,
             eval_split: str, random_flip: bool, num_train_steps: int,
             num_reference_examples: int | None = 50_000):
  """The paper's 256x256 DDPM config on `dataset` (the four 256x256 configs differ only
  in these arguments)."""
  args = config_args.parse(arg, config_file)
  config = ddpm_base.get_config()
  config.name = name

  data = config.data
  data.dataset = dataset
  data.image_size = 256               # centre crop to a square, resize to 256x256
  data.eval_split = eval_split
  data.random_flip = random_flip

  model = config.model
  model.ch = 128
  model.ch_mult = (1, 1, 2, 2, 4, 4)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.0
  model.num_groups = 32

  diffusion = config.diffusion
  diffusion.num_timesteps = 1000
  diffusion.beta_schedule = "linear"
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.var_type = "fixedsmall"

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 2e-5
  optim.warmup_steps = 5000
  optim.grad_clip_norm = 1.0
  optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 64
  training.num_train_steps = num_train_steps
  training.log_every_steps = 100
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 100_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 200_000

  config.sampling.method = "ancestral"
  config.sampling.batch_size = 64     # 256x256 images per compiled sampling call
  ev = config.eval
  ev.num_samples = 50_000
  ev.sample_metrics = "fid"
  ev.num_reference_examples = num_reference_examples   # None: the whole train split
  # Bits/dim on 300 images: the size of the LSUN validation sets; the first 300 of the
  # training split where it is the only one (LSUN cat, CelebA-HQ).
  ev.num_eval_examples = 300
  ev.batch_size = 16                  # bits/dim: 256x256 images per call
  ev.vlb_timestep_chunk = 4           # 250 chunks over the 1000 bound terms

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, eval_examples=16)
    training.log_every_steps = 5
    training.sample_every_steps = 0
    data.image_size = 32
    model.ch = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    training.batch_size = 8
    config.sampling.batch_size = 8
    ev.num_samples = 16
    ev.num_reference_examples = 16
    diffusion.num_timesteps = 100
    ev.vlb_timestep_chunk = 50
  return config


def get_config(arg: str | None = None):
  return ddpm_256("configs/ddpm_church256.py", arg, name="ddpm_church256",
                  dataset="lsun/church_outdoor", eval_split="validation",
                  random_flip=True, num_train_steps=1_200_000)
