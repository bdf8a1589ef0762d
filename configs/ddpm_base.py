"""Placeholder: the ddpm family's base config (being written)."""

from configs import default


def get_config(arg: str | None = None):
  del arg
  config = default.get_config()
  config.model.family = "ddpm"
  return config
