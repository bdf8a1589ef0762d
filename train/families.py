"""The one place where a config's `model.family` picks the family's pure functions.

A family is a class constructed as `Family(config, image_shape, num_classes)` with
`init(rng, example_batch) -> TrainState`, `train_step(state, batch) -> (state,
metrics)`, `eval_step(params, batch, rng) -> per-example metrics`,
`sample(params, rng, num_samples) -> uint8 NHWC` and `sampler_settings() -> dict`.
"""

import ml_collections

from train import autoregressive, ddpm, gan, hvae, score, vae, vdm, vqvae

FAMILIES = {
    "autoregressive": autoregressive.Autoregressive,
    "ddpm": ddpm.DDPM,
    "gan": gan.GAN,
    "hvae": hvae.HierarchicalVAE,
    "score": score.ScoreSDE,
    "vae": vae.VAE,
    "vdm": vdm.VDM,
    "vqvae": vqvae.VQVAE,
}


def get_family(config: ml_collections.ConfigDict, image_shape, num_classes: int):
  name = config.model.family
  if name not in FAMILIES:
    raise ValueError(f"config.model.family={name!r} is not implemented; choose one of "
                     f"{sorted(FAMILIES)}.")
  return FAMILIES[name](config, tuple(image_shape), num_classes)
