"""Base config of the VDM family (train/vdm.py): Kingma et al. 2021, "Variational
Diffusion Models".

configs/default.py plus every field train/vdm.py reads, each documented. The
objective, schedule and sampler fields (config.vdm) hold the paper's values; the
score U-Net is small and the run short, so that the base itself trains on the
embedded 8x8 `digits` on a CPU:

  python main.py --config=configs/vdm_base.py --workdir=/tmp/vdm_base
  python main.py --config=configs/vdm_base.py:runlocal --workdir=/tmp/vdm_smoke

Experiment configs (vdm_cifar.py, and vdm_digits.py on top of it) start from
`get_config()` and set what their paper sets.
"""

import ml_collections

from configs import config_args, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse(arg, "configs/vdm_base.py")
  config = default.get_config()
  config.name = "vdm_base"

  # ------------------------------------------------------------------- vdm
  config.vdm = vdm = ml_collections.ConfigDict()
  # Noise schedule gamma(t) = -log SNR(t): fixed_linear (gamma_min -> gamma_max),
  # learned_linear (learned endpoints, linear in between) or learned (the monotone
  # network of Appendix H with learned endpoints).
  vdm.schedule = "learned"
  # gamma at t = 0 and t = 1: fixed, or the initial endpoints of a learned schedule;
  # also the gamma range the score network maps to [0, 1] for its time embedding.
  vdm.gamma_min = -13.3
  vdm.gamma_max = 5.0
  # Width of the sigmoid layer of the learned monotone schedule (Appendix H).
  vdm.schedule_num_features = 1024
  # Gradient for the learned schedule's shape: 'variance' (of the mean squared
  # diffusion loss, section 5.2; endpoints still follow the bound) or 'vlb'.
  vdm.schedule_gradient = "variance"
  # T: 0 for continuous time (eq. 17), else the discrete-time bound with T steps
  # (eq. 13); a discrete model also samples with T steps.
  vdm.num_timesteps = 0
  # Low-discrepancy times t_i = mod(u + i/B, 1) across the batch (else i.i.d.).
  vdm.antithetic_time_sampling = True
  # (t, eps) draws per test example for the diffusion term of the eval bound.
  vdm.eval_num_times = 1

  # ----------------------------------------------------------------- model
  # The score U-Net without downsampling (models/vdm.py: ScoreUNet); the paper's
  # CIFAR-10 network is configs/vdm_cifar.py.
  model = config.model
  model.family = "vdm"
  model.ch = 32                       # channels at every block (no downsampling)
  model.num_res_blocks = 4            # ResNet blocks down; num_res_blocks + 1 up
  model.dropout = 0.0
  model.num_groups = 8                # GroupNorm groups
  model.fourier_exponents = (7, 8)    # sin/cos(2^n pi z) input features; () disables
  model.conditional = False           # class-conditional (label embedding)
  model.dtype = "float32"             # compute dtype: float32 or bfloat16

  # -------------------------------------------------------------- sampling
  sampling = config.sampling
  # Ancestral steps of a continuous-time model (a discrete one uses its T).
  sampling.num_steps = 250
  sampling.sample_softmax = False     # x = argmax p(x|z_0) (True: a draw from it)

  # ------------------------------------------------------ a short digits run
  optim = config.optim
  optim.learning_rate = 1e-3
  optim.warmup_steps = 100
  optim.ema_decay = 0.999
  training = config.training
  training.batch_size = 64
  training.num_train_steps = 3000
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 1500
  config.eval.num_samples = 1024
  config.eval.batch_size = 360        # the digits test split (355) in one padded batch

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config)
    model.ch = 16
    model.num_res_blocks = 2
    model.num_groups = 4
    vdm.schedule_num_features = 16
    sampling.num_steps = 20
  return config
