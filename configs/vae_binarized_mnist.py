"""The VAE and IWAE of Burda et al. 2016 on binarized MNIST, one stochastic layer.

Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016), section 5
and Table 1 (MNIST, one stochastic layer, test NLL estimated with k=5000 importance
samples): VAE trained with k=1: 86.76 nats; IWAE trained with k=50 (arg 'iwae'):
84.78 nats. (evaluation/paper_tables.py also lists the two-stochastic-layer rows,
85.33 and 82.90, which need the hierarchical model.)

Settings of the paper: fully connected tanh networks 784-200-200-50 (recognition) and
50-200-200-784 (generative), Bernoulli decoder, N(0, I) prior; Adam with beta1=0.9,
beta2=0.999, eps=1e-4 and minibatches of 20; 3280 passes over the 60,000 training
images; evaluation with k=5000 samples. Data: tfds 'mnist' binarized dynamically (a
fresh Bernoulli(pixel/255) draw at every step, inside the family; the test set is drawn
once from the eval rng). Arg 'static' uses tfds 'binarized_mnist' (the fixed binarization
of Larochelle & Murray 2011) instead; its numbers are not comparable with dynamic ones.

The learning rate follows the paper's schedule: 1e-3 * 10^(-i/7) for 3^i passes, i = 0..7
(3280 passes in all), as a piecewise-constant schedule.

  python main.py --config=configs/vae_binarized_mnist.py --workdir=/tmp/vae_bmnist
  python main.py --config=configs/vae_binarized_mnist.py:iwae --workdir=/tmp/iwae_bmnist
  python main.py --config=configs/vae_binarized_mnist.py --workdir=/tmp/vae_bmnist --mode=eval

Args (comma-separated): 'iwae' (train L_50), 'static' (binarized_mnist), 'runlocal'.
"""

from configs import config_args
from configs import vae_base

TRAIN_EXAMPLES = 60_000


def get_config(arg: str | None = None):
  args = config_args.parse(arg, "configs/vae_binarized_mnist.py", choices=("iwae", "static"))
  config = vae_base.get_config()
  config.name = "vae_binarized_mnist"

  config.data.dataset = "mnist"
  config.data.eval_split = "test"
  config.data.image_size = None
  config.data.random_flip = False

  model = config.model
  model.architecture = "mlp"
  model.hidden_sizes = (200, 200)     # deterministic tanh layers (Burda et al. sec. 5)
  model.latent_dim = 50               # one stochastic layer of 50 units
  model.ch = 64                       # conv only (unused by the mlp)
  model.decoder = "bernoulli"
  model.binarization = "dynamic"
  model.beta = 1.0                    # plain ELBO
  model.kl_warmup_steps = 0
  model.free_bits = 0.0
  model.train_samples = 1             # k = 1: the VAE row of Table 1

  optim = config.optim
  optim.optimizer = "adam"
  optim.learning_rate = 1e-3
  optim.warmup_steps = 0
  # Stage i (i = 0..7) lasts 3^i passes at 1e-3 * 10^(-i/7): the lr drops by 10^(-1/7)
  # at the end of passes 1, 4, 13, 40, 121, 364 and 1093 (cumulative sums of 3^i).
  steps_per_pass = TRAIN_EXAMPLES // 20
  optim.lr_schedule = "piecewise"
  optim.lr_boundaries = tuple(steps_per_pass * sum(3**j for j in range(i + 1))
                              for i in range(7))
  optim.lr_boundary_scales = (10 ** (-1 / 7),) * 7
  optim.beta1, optim.beta2, optim.eps = 0.9, 0.999, 1e-4
  optim.grad_clip_norm = 0.0          # the paper clips nothing
  optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 20
  training.num_train_steps = 3280 * TRAIN_EXAMPLES // 20   # 3280 passes
  training.log_every_steps = 1000
  training.checkpoint_every_steps = 50_000
  training.sample_every_steps = 500_000
  training.num_samples_in_grid = 100

  config.sampling.use_ema = False     # the paper evaluates the trained weights
  config.sampling.decoder_output = "mean"   # Bernoulli probabilities as grey levels
  config.sampling.batch_size = 1000
  config.eval.num_samples = 10_000
  config.eval.batch_size = 100
  config.eval.iwae_samples = 5000     # k of the reported NLL estimate
  config.eval.iwae_chunk = 500

  if "iwae" in args:
    config.name = "iwae_binarized_mnist"
    model.train_samples = 50          # the IWAE k=50 row of Table 1
  if "static" in args:
    config.data.dataset = "binarized_mnist"
    model.binarization = "binary"     # stored as 0/1 already
  if "runlocal" in args:
    config_args.runlocal(config, eval_examples=20)
    config.eval.iwae_samples = 50
    config.eval.iwae_chunk = 25
  return config
