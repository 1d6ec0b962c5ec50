r"""Tsai et al.'s conv-capsule routing step: capsjax's kernel vs a naive JAX one.

Times, side by side in one process, the forward and the forward+backward pass
of one inverted dot-product attention routing step (with the poses of the
layer above, as every iteration after the first) at the shape of the CIFAR-10
ResNet backbone's first conv capsule layer (Tsai et al., 2020,
``resnet_backbone_CIFAR10.json``): a 16x16 grid of 32 capsule types with 4x4
matrix poses -> 7x7 x 32 types, kernel 3, stride 2, batch 32. The two
implementations are

* ``naive``: a straightforward JAX translation of Algorithm 1 written below,
  which gathers every window and materialises every vote ``P_i W_ij``;
* ``capsjax``: :func:`capsjax.routing.inverted_attention_conv`, vmapped over
  the batch.

Each timed call is repeated ``--repeats`` times with the implementations
interleaved (so load swings hit both alike) and the median is printed, with
the compiled program's peak memory (XLA memory analysis) and the ratio naive /
capsjax. ENVIRONMENT.md measured the authors' PyTorch code at 18.3 s for this
forward+backward on this machine and, side by side, a naive JAX version ~3.1x
faster than it; the "vs authors" column is ``ratio x 3.1``, an estimate, not a
measurement (the PyTorch code is not run here).

  python benchmarks/tsai_conv.py                  # batch 32, ~1 min quiet, 2-4 min on 2 busy cores
  python benchmarks/tsai_conv.py --batch=8 --repeats=3

Uses XLA's default flags (not the tests' fast-compile ones).

Measured 2026-11-22 04:42 on the 2-core CPU, quiet (batch 32, median of 7):
naive 1888 ms fwd / 4439 ms fwd+bwd (3595 MiB); capsjax 127 / 633 ms (92
MiB), 14.9x / 7.0x faster than naive, ~22x the authors' (estimate). Earlier
kernels in the same comparison: 2.0x (votes-free matmuls, first version),
3.0x (unrolled 4x4 products, batch chunks; 1357 ms), 7.0x (this one: the
logits as one fused 64-term sum, recomputed in the backward pass).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import harness
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from capsjax import routing

_BATCH = flags.DEFINE_integer("batch", 32, "Batch size (the paper's timing uses 32).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved timed calls per program.")
_COMPUTE_DTYPE = flags.DEFINE_string(
    "compute_dtype", "", "Also time capsjax's kernel with this compute_dtype (e.g. bfloat16).")

# Shape of the first conv capsule layer of Tsai et al.'s CIFAR-10 backbone.
_HW, _N_CAPS, _S, _K, _STRIDE = 16, 32, 4, 3, 2
_HW_OUT = (_HW - _K) // _STRIDE + 1
# ENVIRONMENT.md, "The authors' PyTorch code on this CPU": fwd+bwd 18.3 s, and a
# naive vote-materialising JAX version ~3.1x faster side by side.
_AUTHORS_FWD_BWD_S = 18.3
_NAIVE_VS_AUTHORS = 3.1


def naive_routing_step(x_inp: jax.Array, W: jax.Array, x_out: jax.Array,
                       stride: int) -> jax.Array:
  """One routing step with every window gathered and every vote materialised.

  Args:
    x_inp: input poses ``[B, H, W, n_inp, s*s]``.
    W: weights ``[k, k, n_inp, n_out, s, s]``.
    x_out: poses of the layer above ``[B, H', W', n_out, s*s]``.
    stride: window stride.

  Returns:
    ``LayerNorm(sum_i r_ij v_ij)``, ``[B, H', W', n_out, s*s]`` (LayerNorm
    without affine parameters).
  """
  d = x_inp.shape[-1]
  k, s = W.shape[0], W.shape[-1]
  h_out, w_out = x_out.shape[1:3]
  # Window gather: rows stride*h' + a, columns stride*w' + b.
  rows = (stride * np.arange(h_out)[:, None] + np.arange(k)[None, :])[:, None, :, None]
  cols = (stride * np.arange(w_out)[:, None] + np.arange(k)[None, :])[None, :, None, :]
  windows = x_inp[:, rows, cols]                          # [B, h', w', k, k, i, d]
  poses = windows.reshape(windows.shape[:-1] + (s, s))
  votes = jnp.einsum("byxklirc,klijce->byxklijre", poses, W,
                     precision="highest")                 # Eq. (1)
  votes = votes.reshape(votes.shape[:-2] + (d,))          # [B, h', w', k, k, i, j, d]
  agree = jnp.einsum("byxklijd,byxjd->byxklij", votes, x_out,
                     precision="highest") / math.sqrt(d)  # Eq. (2)
  r = jax.nn.softmax(agree, axis=-1)                      # Eq. (3)
  r = r / (jnp.sum(r, axis=-1, keepdims=True) + 1e-10)
  pose = jnp.einsum("byxklij,byxklijd->byxjd", r, votes,
                    precision="highest")                  # Eq. (4)
  centred = pose - jnp.mean(pose, axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + 1e-5)


def capsjax_routing_step(compute_dtype=None) -> Callable[..., jax.Array]:
  """capsjax's kernel vmapped over the batch, same signature as the naive one."""
  def step(x_inp, W, x_out, stride):
    kwargs = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    return jax.vmap(lambda x, xo: routing.inverted_attention_conv(
        x, W, xo, stride=stride, matrix_pose=True, **kwargs))(x_inp, x_out)
  return step


def make_inputs(batch: int, seed: int = 0) -> tuple[jax.Array, ...]:
  """Input poses, weights (official-style ``1/sqrt`` scale) and upper poses."""
  rng = np.random.default_rng(seed)
  d = _S * _S
  x_inp = rng.standard_normal((batch, _HW, _HW, _N_CAPS, d), np.float32)
  W = rng.standard_normal((_K, _K, _N_CAPS, _N_CAPS, _S, _S), np.float32)
  W = W * np.float32((_N_CAPS / (_S * _N_CAPS * _K * _K)) ** 0.5)
  x_out = rng.standard_normal((batch, _HW_OUT, _HW_OUT, _N_CAPS, d), np.float32)
  return tuple(jnp.asarray(a) for a in (x_inp, W, x_out))


def _programs(step: Callable[..., jax.Array], args) -> tuple[harness.Compiled, ...]:
  """Compiled forward and forward+backward (grads of the sum of squares)."""
  fwd = harness.compile_fn(lambda x, w, xo: step(x, w, xo, _STRIDE), *args)
  loss = lambda x, w, xo: jnp.sum(jnp.square(step(x, w, xo, _STRIDE).astype(jnp.float32)))
  bwd = harness.compile_fn(jax.value_and_grad(loss, argnums=(0, 1, 2)), *args)
  return fwd, bwd


def _interleaved_medians(programs: dict[str, harness.Compiled], args,
                         repeats: int) -> dict[str, float]:
  """Median seconds per program, calling each once per round after a warm-up."""
  for prog in programs.values():
    jax.block_until_ready(prog.fn(*args))
  times: dict[str, list[float]] = {name: [] for name in programs}
  for _ in range(repeats):
    for name, prog in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(prog.fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; shape "
        f"{_HW}x{_HW}x{_N_CAPS} caps {_S}x{_S} -> {_HW_OUT}x{_HW_OUT}x{_N_CAPS}, "
        f"k{_K} s{_STRIDE}, batch {_BATCH.value}")
  args = make_inputs(_BATCH.value)
  impls = {"naive": naive_routing_step, "capsjax": capsjax_routing_step()}
  if _COMPUTE_DTYPE.value:
    impls[f"capsjax {_COMPUTE_DTYPE.value}"] = capsjax_routing_step(
        jnp.dtype(_COMPUTE_DTYPE.value))

  compiled = {name: _programs(step, args) for name, step in impls.items()}
  ref = np.asarray(compiled["naive"][0].fn(*args), np.float64)
  for name in impls:
    got = np.asarray(compiled[name][0].fn(*args), np.float64)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    print(f"{name}: relative error vs naive {err:.2e}")

  fwd_s = _interleaved_medians({n: c[0] for n, c in compiled.items()}, args,
                               _REPEATS.value)
  bwd_s = _interleaved_medians({n: c[1] for n, c in compiled.items()}, args,
                               _REPEATS.value)
  rows = []
  for name, (fwd, bwd) in compiled.items():
    ratio = bwd_s["naive"] / bwd_s[name]
    rows.append([name, fwd_s[name] * 1e3, bwd_s[name] * 1e3,
                 harness.mib(fwd.peak_bytes), harness.mib(bwd.peak_bytes),
                 f"{fwd_s['naive'] / fwd_s[name]:.2f}x", f"{ratio:.2f}x",
                 f"~{ratio * _NAIVE_VS_AUTHORS:.1f}x (est.)",
                 fwd.compile_s + bwd.compile_s])
  print(harness.format_table(
      ["impl", "fwd ms", "fwd+bwd ms", "fwd peak MiB", "fwd+bwd peak MiB",
       "fwd vs naive", "fwd+bwd vs naive",
       f"vs authors' {_AUTHORS_FWD_BWD_S} s (ENVIRONMENT.md, not run here)",
       "compile s"], rows))
  print(f"median of {_REPEATS.value} interleaved calls each. 'vs authors' = fwd+bwd "
        f"ratio vs naive x {_NAIVE_VS_AUTHORS} (ENVIRONMENT.md's side-by-side naive-vs-"
        "authors ratio): an estimate, the PyTorch code is not run here.")


if __name__ == "__main__":
  app.run(main)
