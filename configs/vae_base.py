"""Placeholder: the vae family's base config (being written)."""

from configs import default


def get_config(arg: str | None = None):
  del arg
  config = default.get_config()
  config.model.family = "vae"
  return config
