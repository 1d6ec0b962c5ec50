"""Duarte et al. experiments: the readings of h_Q, h_K, h_V reach the model.

Sec. 3.1 learns the query, key and value maps "using two linear layers for
all functions h". The configs name the reading (``model.qkv_layers``,
``model.qkv_hidden``, ``model.qkv_activation``); ``compare.py`` has one row
per other reading. Models are built with ``nnx.eval_shape`` (nothing is
initialised or trained here).
"""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from capsjax.train import entrypoint
from experiments.duarte2021 import compare, main
from experiments.duarte2021.configs import howto100m, synthetic


def _model(m):
  return nnx.eval_shape(lambda: main.make_model(m, nnx.Rngs(0)))


def _count(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_paper_configs_read_two_linear_layers():
  for config in (howto100m.get_config(), synthetic.get_config()):
    m = config.model
    assert (m.qkv_layers, m.qkv_hidden, m.qkv_activation) == (2, None, None)
    entrypoint.check_config(config, main.FIELDS)


def test_compare_readings_set_the_model_fields():
  config = synthetic.get_config()
  default = compare.variant_config(config, "self_attention").model
  one = compare.variant_config(config, "self_attention_h1").model
  relu = compare.variant_config(config, "self_attention_h_relu").model
  for m in (default, one, relu):
    assert (m.architecture, m.routing, m.pool) == (
        "capsules", "self_attention", "secondary")
  assert (one.qkv_layers, one.qkv_hidden, one.qkv_activation) == (1, None, None)
  assert (relu.qkv_layers, relu.qkv_activation) == (2, "relu")
  assert config.model.qkv_layers == 2 and config.model.qkv_activation is None


def test_make_model_passes_the_reading_to_the_routing_layer():
  config = synthetic.get_config()
  d1, d2 = config.model.d1, config.model.d2
  default = _model(compare.variant_config(config, "self_attention").model)
  one = _model(compare.variant_config(config, "self_attention_h1").model)
  relu = _model(compare.variant_config(config, "self_attention_h_relu").model)
  assert default.routing.qkv_layers == 2 and default.routing.qkv_activation is None
  assert one.routing.qkv_layers == 1 and one.routing.w_q2 is None
  assert relu.routing.qkv_activation == "relu"
  # The second layers: 3 (d2 d2 + d2) parameters more than one affine map.
  assert _count(default) - _count(one) == 3 * (d2 * d2 + d2)
  assert _count(relu) == _count(default)
  # A hidden width from the config.
  c = compare.variant_config(config, "self_attention")
  c.model.qkv_hidden = 5
  wide = _model(c.model)
  assert wide.routing.w_q.shape == (d1, 5)
  assert wide.routing.w_v2.shape == (5, d2)


def test_other_routings_ignore_the_qkv_fields():
  config = synthetic.get_config()
  none = _model(compare.variant_config(config, "none").model)
  c = compare.variant_config(config, "none")
  c.model.qkv_activation = "relu"
  assert _count(_model(c.model)) == _count(none)
  c.model.qkv_layers = 3
  with pytest.raises(ValueError, match="qkv_layers must be 1 or 2, got 3"):
    _model(c.model)
