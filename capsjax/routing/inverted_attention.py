"""Placeholder: being written."""


def inverted_attention_fc(*args, **kwargs):
  raise NotImplementedError


def inverted_attention_conv(*args, **kwargs):
  raise NotImplementedError
