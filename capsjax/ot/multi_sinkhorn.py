"""Placeholder: being written."""


def multi_sinkhorn(*args, **kwargs):
  raise NotImplementedError


def multi_sk_assignment(*args, **kwargs):
  raise NotImplementedError
