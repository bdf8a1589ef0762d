"""DCGAN on CIFAR-10: Radford et al. 2016, "Unsupervised Representation Learning with
Deep Convolutional Generative Adversarial Networks".

Target: Inception score about 6.2-6.7 on unconditional CIFAR-10. Radford et al. report
no CIFAR-10 generation score; the usual DCGAN figures are re-implementations:
6.16 +- 0.07 (quoted in Gulrajani et al. 2017, Table 3) and 6.64 +- 0.14 (Miyato et
al. 2018, Table 2). Hyperparameters from the paper's section 4: Adam with learning rate
2e-4 and beta1 = 0.5, mini-batches of 128, weights N(0, 0.02), LeakyReLU slope 0.2 in D,
batch norm in G and D (not on D's input layer nor G's output), ReLU and a tanh output in
G, a 100-d uniform latent, non-saturating loss, no pooling or dense hidden layers. The
widths (G 512@4 -> 256@8 -> 128@16 -> 3@32, D 64 -> 128 -> 256) are the 32x32 version of
the paper's 64x64 network; the number of steps (100k) is not from the paper.

  python main.py --config=configs/dcgan_cifar.py --workdir=runs/dcgan_cifar
  python main.py --config=configs/dcgan_cifar.py --workdir=runs/dcgan_cifar --mode=sample

`--config=configs/dcgan_cifar.py:runlocal` shrinks everything for a smoke test.
"""

from configs import config_args, gan_base


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/dcgan_cifar.py")
  config = gan_base.get_config()
  config.name = "dcgan_cifar"
  config.data.dataset = "cifar10"
  config.data.image_size = None       # native 32x32
  config.data.random_flip = False

  model = config.model
  model.architecture = "dcgan"
  model.ch, model.ch_mult = 64, (8, 4, 2)
  model.d_ch, model.d_ch_mult = 64, (1, 2, 4)
  model.z_dim = 100
  model.z_distribution = "uniform"
  model.init = "normal_0.02"
  model.d_spectral_norm = False

  config.gan.loss = "non_saturating"
  config.gan.n_critic = 1

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 2e-4
  optim.beta1, optim.beta2 = 0.5, 0.999
  optim.lr_schedule = "constant"
  config.sampling.use_ema = False

  training = config.training
  training.batch_size = 128
  training.num_train_steps = 100_000
  training.log_every_steps = 100
  training.checkpoint_every_steps = 5000
  training.sample_every_steps = 10_000
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500

  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=10, every=10, eval_examples=16)
    training.log_every_steps = 5
    model.ch, model.d_ch = 8, 8
    training.batch_size = 8
    config.eval.num_samples = 16
  return config
