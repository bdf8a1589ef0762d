"""EDM on CIFAR-10 (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"), config F of Table 2.

Reproduces (evaluation/paper_tables.py): VP architecture (DDPM++) with EDM's
preconditioning, loss and sampler, FID 1.97 unconditional / 1.79 conditional ('cond')
with the deterministic Heun sampler, 18 steps = 35 network evaluations, sigma in
[0.002, 80], rho 7 (the paper reports the minimum over 3 FID evaluations).
Settings of the paper's train.py for CIFAR-10: batch 512, Adam lr 1e-3 (betas 0.9,
0.999, eps 1e-8) ramped up linearly over 10 Mimg, 200 Mimg of training (390,625 steps),
EMA with a half-life of 0.5 Mimg (decay 0.5^(512 / 500,000) = 0.99929 per step),
dropout 0.13, sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2). 'ncsnpp' switches to the VE
architecture (EDM's NCSN++ network) with the same preconditioning.

Not reproduced: EDM's non-leaky geometric augmentation (augment_p 0.12, with its 9
augmentation labels fed to the network). The network keeps the 9-wide augmentation
input (its parameter count is the paper's 55.73M) and always receives zeros, i.e.
"no augmentation"; without it the paper's ablations show FID rising above 2 on
CIFAR-10. The EMA has no warm-up ramp (EDM shortens the half-life early in training).

  python main.py --config=configs/edm_cifar.py --workdir=runs/edm_cifar
  python main.py --config=configs/edm_cifar.py:cond --workdir=runs/edm_cifar_cond
  python main.py --config=configs/edm_cifar.py --workdir=runs/edm_cifar --mode=eval

The published networks (NVlabs/edm's edm-cifar10-32x32-{uncond,cond}-{vp,ve}.pkl: 'vp'
is this config, 've' is 'ncsnpp', 'cond' the conditional ones) convert exactly into it
from a state dict exported with the authors' code (convert/edm.py; a .pkl is refused
with the export command, since unpickling it runs code):

  python -m convert --from=edm --source=edm-cifar10-32x32-uncond-vp.pt \
      --config=configs/edm_cifar.py --workdir=runs/edm_cifar_published

Args (comma-separated): 'cond', 'ncsnpp', 'runlocal'.
"""

from configs import config_args, score_base

BATCH_SIZE = 512
# EDM's CIFAR-10 networks (its train.py --arch) as model fields, written out so that
# a config imports no model code; tests/test_configs.py checks them against
# models/ncsnpp.py's EDM_CIFAR10 (channel_mult_emb is SongUNet's default, 4).
_COMMON = dict(ch=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
               dropout=0.13, augment_dim=9, decoder_type="standard")
NETWORKS = {
    # VP architecture (DDPM++).
    "ddpmpp": dict(_COMMON, embedding_type="positional", channel_mult_noise=1,
                   encoder_type="standard", fir_kernel=(1, 1)),
    # VE architecture (NCSN++).
    "ncsnpp": dict(_COMMON, embedding_type="fourier", channel_mult_noise=2,
                   encoder_type="residual", fir_kernel=(1, 3, 3, 1)),
}


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/edm_cifar.py", choices=("cond", "ncsnpp"))
  arch = "ncsnpp" if "ncsnpp" in args else "ddpmpp"
  config = score_base.get_config()
  config.name = f"edm_{arch}{'_cond' if 'cond' in args else ''}_cifar"
  config.data.dataset = "cifar10"
  config.data.random_flip = False

  sde = config.sde
  sde.type = "edm"
  sde.sigma_min, sde.sigma_max = 0.002, 80.0
  sde.sigma_data, sde.p_mean, sde.p_std = 0.5, -1.2, 1.2
  sde.data_centered = True
  sde.reduce_mean = False             # EDM sums the weighted squared error
  sde.sample_eps = 1e-5

  m = config.model
  m.name = "songunet"
  m.conditional = "cond" in args
  m.update(NETWORKS[arch])
  m.num_groups = 32                   # SongUNet's GroupNorm

  o = config.optim
  o.optimizer, o.learning_rate = "adam", 1e-3
  o.warmup_steps = 10_000_000 // BATCH_SIZE     # 10 Mimg ramp-up
  o.beta1, o.beta2, o.eps, o.grad_clip_norm = 0.9, 0.999, 1e-8, 0.0
  o.ema_decay = 0.5 ** (BATCH_SIZE / 500_000)

  t = config.training
  t.batch_size = BATCH_SIZE
  t.num_train_steps = 200_000_000 // BATCH_SIZE
  t.checkpoint_every_steps = 5_000
  t.keep_checkpoint_every_steps = 50_000
  t.sample_every_steps = 25_000

  s = config.sampling
  s.method, s.num_steps, s.rho = "edm_heun", 18, 7.0
  s.s_churn, s.s_min, s.s_max, s.s_noise = 0.0, 0.0, float("inf"), 1.0
  s.batch_size = 1000
  config.eval.batch_size = 1000
  config.eval.num_samples = 50_000

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=5, eval_examples=8)
    t.sample_every_steps = 5
    config.eval.num_samples = 4
    m.ch, m.ch_mult, m.num_res_blocks, m.num_groups = 16, (1, 2), 1, 8
    m.attn_resolutions = (8,)
    config.data.dataset = "shapes/16"
    t.batch_size = 8
    o.warmup_steps = 2
    s.num_steps, s.batch_size = 3, 4
    config.eval.ode_rtol = config.eval.ode_atol = 1e-2
  return config
