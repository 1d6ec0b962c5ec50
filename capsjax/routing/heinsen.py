"""Placeholder: being written."""


def heinsen_routing(*args, **kwargs):
  raise NotImplementedError
HeinsenRouting = None
