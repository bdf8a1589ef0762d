"""Placeholder: the hvae family's base config (being written)."""

from configs import default


def get_config(arg: str | None = None):
  del arg
  config = default.get_config()
  config.model.family = "hvae"
  return config
