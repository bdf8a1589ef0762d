"""VDM on CIFAR-10: Kingma et al. 2021, "Variational Diffusion Models".

Reproduces Table 1 (CIFAR-10 without data augmentation): 2.65 bits/dim (test-set
variational bound; the authors' released checkpoint of this setting evaluates to 2.637).
The paper's setting (section 6, Appendix B) and its released CIFAR-10 config: continuous
time (T = infinity), gamma_min = -13.3, gamma_max = 5 as the initial endpoints, the
score U-Net without downsampling (32 ResNet blocks of 128 channels down, 33 up, one
attention block in the middle), dropout 0.1, Fourier features 2^7 pi and 2^8 pi of the
input, low-discrepancy time sampling; AdamW (beta1 0.9, beta2 0.99, weight decay 0.01),
learning rate 2e-4 after a 100-step warm-up, no decay, no gradient clipping, batch
128, EMA 0.9999, 10M steps, no data augmentation.

Parameter count (computed by this code, `VDM(config, (32, 32, 3), 10).init`):
30,589,319 = score network 30,586,243 + learned schedule 3,076 (its 1024-wide monotone
network and the two endpoints); the paper gives no count.

Differences that remain: the weight decay of optax.adamw reaches every parameter (the
released code spares the biases); the ResNet blocks are the project's DDPM blocks
(models/layers.py: the timestep projection has a bias and sees silu(temb)).

The schedule is the paper's learned monotone network with the variance-minimising
gradient (config.vdm.schedule='learned'); the released config learns the endpoints of a
linear schedule only (--config.vdm.schedule=learned_linear).

  python main.py --config=configs/vdm_cifar.py --workdir=runs/vdm_cifar
  python main.py --config=configs/vdm_cifar.py --workdir=runs/vdm_cifar --mode=eval
  python main.py --config=configs/vdm_cifar.py --workdir=runs/vdm_cifar --mode=sample

`--config=configs/vdm_cifar.py:runlocal` shrinks everything for a smoke test on a
laptop CPU (tiny network, a few steps); it reproduces nothing.
"""

from configs import config_args, vdm_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/vdm_cifar.py")
  config = vdm_base.get_config()
  config.name = "vdm_cifar"
  # config.vdm keeps the base's values, which are the paper's: continuous time, the
  # learned monotone schedule starting from gamma in [-13.3, 5] with the variance
  # gradient, low-discrepancy times, one (t, eps) draw per test example.

  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False     # the likelihood benchmark: no augmentation

  model = config.model
  model.ch = 128                      # channels at every block (no downsampling)
  model.num_res_blocks = 32           # ResNet blocks down; num_res_blocks + 1 up
  model.dropout = 0.1
  model.num_groups = 32
  model.fourier_exponents = (7, 8)    # sin/cos(2^n pi z) input features

  optim = config.optim
  optim.optimizer = "adamw"
  optim.learning_rate = 2e-4
  optim.warmup_steps = 100
  optim.lr_schedule = "constant"
  optim.beta1 = 0.9
  optim.beta2 = 0.99
  optim.eps = 1e-8
  optim.weight_decay = 0.01
  optim.grad_clip_norm = 0.0
  optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 128
  training.num_train_steps = 10_000_000
  training.log_every_steps = 1000
  training.checkpoint_every_steps = 10_000
  training.sample_every_steps = 100_000
  training.keep_checkpoints = 3
  training.keep_checkpoint_every_steps = 1_000_000

  sampling = config.sampling
  sampling.num_steps = 1000           # ancestral steps of a continuous-time model
  sampling.sample_softmax = False     # x = argmax p(x|z_0) (True: a draw from it)

  config.eval.num_samples = 10_000
  config.eval.batch_size = 500

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, eval_examples=16)
    training.log_every_steps = 5
    training.sample_every_steps = 0
    config.eval.num_samples = 16
    model.ch = 16
    model.num_res_blocks = 2
    model.num_groups = 4
    config.vdm.schedule_num_features = 16
    training.batch_size = 8
    sampling.num_steps = 20
    sampling.batch_size = 16
  return config
