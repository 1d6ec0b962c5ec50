"""Placeholder: being written."""


def self_attention_routing(*args, **kwargs):
  raise NotImplementedError
