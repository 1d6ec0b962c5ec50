"""Test-session set-up: fast compiles and a persistent compilation cache.

Compile time dominates this suite (see ENVIRONMENT.md), so before jax is
imported we lower XLA's optimisation effort (never do this for benchmarks)
and keep compiled programs in a cache outside the repository.
"""

import os

_FAST_COMPILE = ("--xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("CAPSJAX_TEST_CACHE",
                   os.path.expanduser("~/.cache/capsjax/jax-test-cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
