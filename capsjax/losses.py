"""Placeholder: being written."""


def mms_loss(*args, **kwargs):
  raise NotImplementedError


def margin_loss(*args, **kwargs):
  raise NotImplementedError
