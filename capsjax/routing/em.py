"""Placeholder: being written."""


def em_routing(*args, **kwargs):
  raise NotImplementedError
EMRouting = None
