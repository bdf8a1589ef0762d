"""BigGAN on class-conditional CIFAR-10: Brock et al. 2019, "Large Scale GAN Training
for High Fidelity Natural Image Synthesis".

Target: the paper's CIFAR-10 result, FID 14.73 and Inception score 9.22 (reported in
the paper's appendix; the table number was not re-checked here).
Network (appendix B, 32x32): G: z (128) -> linear to 4x4x4ch, three up-sampling
ResBlocks of 4ch with class-conditional batch norm, BN ReLU 3x3 conv, tanh; D: two
down-sampling then two plain ResBlocks of 4ch, ReLU, global sum pooling, linear plus
the projection <embed(y), h>; ch = 64; spectral norm in G and D. Training settings
from the authors' BigGAN-PyTorch CIFAR-10 launch script (checked in copies of it: the
copy in the repository index has other, older settings): batch 50 per D step and
num_D_steps = 4 (so batch_size = 4 * 50), G and D Adam lr 2e-4 with betas (0, 0.999),
hinge loss, N(0, 0.02) init, no attention, no orthogonal regularisation (G_ortho 0),
per-layer class embeddings in the conditional batch norm (no shared embedding, no
hierarchical z), EMA of G with decay 0.9999 from step 1000, 500 epochs = 125k G steps.
Set model.shared_embedding_dim / hierarchical_z / gan.ortho_weight for the ImageNet
BigGAN features, sampling.truncation for the truncation trick (0: off, as for FID).

  python main.py --config=configs/biggan_cifar.py --workdir=runs/biggan_cifar
  python main.py --config=configs/biggan_cifar.py --workdir=runs/biggan_cifar --mode=sample

`--config=configs/biggan_cifar.py:runlocal` shrinks everything for a smoke test.
"""

from configs import config_args, gan_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/biggan_cifar.py")
  config = gan_base.get_config()
  config.name = "biggan_cifar"
  config.data.dataset = "cifar10"
  config.data.image_size = None
  config.data.random_flip = False

  model = config.model
  model.architecture = "resnet"
  model.conditional = True
  model.ch, model.ch_mult = 64, (4, 4, 4)
  model.d_ch, model.d_ch_mult = 64, (4, 4, 4, 4)
  model.d_downsample = (True, True, False, False)
  model.d_pooling = "sum"
  model.z_dim = 128
  model.init = "normal_0.02"
  model.g_spectral_norm = model.d_spectral_norm = True
  model.shared_embedding_dim = 0
  model.hierarchical_z = False

  gan = config.gan
  gan.loss = "hinge"
  gan.n_critic = 4
  gan.ortho_weight = 0.0
  gan.ema_start_step = 1000

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 2e-4
  gan.d_learning_rate = 2e-4
  optim.beta1, optim.beta2 = 0.0, 0.999
  optim.eps = 1e-8
  optim.lr_schedule = "constant"
  optim.ema_decay = 0.9999
  config.sampling.use_ema = True
  config.sampling.truncation = 0.0

  training = config.training
  training.batch_size = 4 * 50
  training.num_train_steps = 125_000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 5000
  training.sample_every_steps = 10_000
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=10, eval_examples=16)
    training.log_every_steps = 5
    model.ch = model.d_ch = 4
    training.batch_size = 4 * 2
    config.eval.num_samples = 16
  return config
