"""GANs on the 2-D mixtures of Gaussians (ring of 8, grid of 25): mode coverage.

After Gulrajani et al. 2017's toy experiments (section 5.1 and their gan_toy.py: MLP
generator and discriminator with three ReLU hidden layers, a 2-d Gaussian latent,
critic batch 256, Adam betas (0.5, 0.9), gradient penalty lambda 0.1 with 5 critic
updates) on the ring/grid mixtures of Metz et al. 2017 / Srivastava et al. 2017
(datasets/toy2d.py), made CPU-sized: layers of 128 (not 512), learning rate 5e-4 (not
1e-4) with an EMA generator (decay 0.995) for sampling, and 2000 steps (ring) or 4000
(grid) instead of 100k. Loss variants by argument: 'wgangp' (default), 'hinge'
(spectrally normalised D, 5 D updates) and 'ns' (non-saturating, 1 D update).
Mixtures: 'ring' (default) or 'grid'. It reproduces no paper number.

  python main.py --config=configs/gan_toy.py:ring,wgangp --workdir=/tmp/gan_toy
  python main.py --config=configs/gan_toy.py:ring,wgangp --workdir=/tmp/gan_toy \
      --mode=eval

The data are float32 points (`toy2d/<mixture>`: fresh draws every step); training
writes scatter plots of the generator's samples to workdir/samples/, and --mode=eval
writes the mode-coverage diagnostics (modes covered, fraction of high-quality samples,
KL to uniform over modes) of eval.num_samples = 2,500 samples to
workdir/eval/step_N.json. --mode=sample writes the points (.npz) and a scatter plot.
Add 'runlocal' to the argument for a seconds-long run.
"""

from configs import config_args, gan_base

LOSSES = ("wgangp", "hinge", "ns")
MIXTURES = ("ring", "grid")


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/gan_toy.py", choices=LOSSES + MIXTURES,
                           exclusive=(LOSSES, MIXTURES))
  loss = next((a for a in args if a in LOSSES), "wgangp")
  mixture = next((a for a in args if a in MIXTURES), "ring")
  config = gan_base.get_config()
  config.name = f"gan_toy_{mixture}_{loss}"
  config.data.dataset = f"toy2d/{mixture}"

  model = config.model
  model.architecture = "mlp"
  model.mlp_hidden = 128
  model.mlp_layers = 3
  model.z_dim = 2
  model.d_spectral_norm = loss == "hinge"

  gan, optim = config.gan, config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 5e-4
  optim.beta1, optim.beta2 = 0.5, 0.9
  optim.ema_decay = 0.995
  per_update_batch = 256
  if loss == "wgangp":
    gan.loss, gan.gp_weight, gan.n_critic = "wasserstein", 0.1, 5
  elif loss == "hinge":
    gan.loss, gan.n_critic = "hinge", 5
  else:
    gan.loss, gan.n_critic = "non_saturating", 1
  config.sampling.use_ema = True
  config.sampling.batch_size = 2500   # the eval samples in one generator call
  config.eval.num_samples = 2500      # mode coverage of 2,500 samples
  config.eval.batch_size = 256

  training = config.training
  training.batch_size = gan.n_critic * per_update_batch
  training.num_train_steps = 2000 if mixture == "ring" else 4000
  training.checkpoint_every_steps = 500
  training.sample_every_steps = 500
  training.num_samples_in_grid = 1000   # points in each scatter plot
  if config_args.RUNLOCAL in args:
    config_args.runlocal(config, num_train_steps=20, every=10)
    config.eval.num_samples = 2500    # the mode-coverage diagnostics need them all
    training.num_samples_in_grid = 1000
    model.mlp_hidden = 32
    training.batch_size = gan.n_critic * 16
  return config
