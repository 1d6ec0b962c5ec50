"""Executes ``notebooks/quickstart.ipynb`` top to bottom so it cannot rot.

The notebook runs in a fresh ``python3`` kernel of *this* interpreter (a
kernelspec pointing at ``sys.executable`` is installed into a temporary
``JUPYTER_PATH``, so a system-wide ``python3`` kernel of another Python cannot
be picked up), headless (``MPLBACKEND=Agg``). Any cell error fails the test;
the accuracy the last cell prints must be well above chance (10 %).
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
pytest.importorskip("matplotlib")

_NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
_QUICKSTART = _NOTEBOOKS / "quickstart.ipynb"
_KERNEL = "python3"
# 300 steps reach ~0.97 on the 359 test digits; 0.85 leaves room for other
# BLAS/XLA versions while still failing on a model that did not learn.
_MIN_ACCURACY = 0.85
_TIMEOUT_S = 600  # per cell; the whole notebook takes ~1 min on a 2-core CPU


def _text_outputs(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out.get("text", ""))
    elif "data" in out and "text/plain" in out["data"]:
      parts.append(out["data"]["text/plain"])
  return "".join(parts)


def test_quickstart_runs_and_learns(tmp_path, monkeypatch):
  spec_dir = kernelspec.install(prefix=str(tmp_path), kernel_name=_KERNEL)
  argv = json.loads((pathlib.Path(spec_dir) / "kernel.json").read_text())["argv"]
  assert argv[0] == sys.executable, argv
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
  # Share the test session's persistent compilation cache (jax reads these
  # environment variables at import); the training itself compiles at full
  # optimisation, as a user's run would.
  import jax  # pylint: disable=g-import-not-at-top
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", cache)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
  monkeypatch.setenv("XLA_FLAGS", "")

  nb = nbformat.read(_QUICKSTART, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name=_KERNEL, timeout=_TIMEOUT_S, allow_errors=False,
      resources={"metadata": {"path": str(_NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on any cell error

  banner = _text_outputs(nb.cells[1])
  # This checkout (installed editable, or found by the cell's fallback).
  assert f"capsjax: {_NOTEBOOKS.parent / 'capsjax'}" in banner, banner

  final = _text_outputs(nb.cells[-2])
  match = re.search(r"test accuracy: ([0-9.]+) on (\d+) test digits", final)
  assert match, f"no accuracy line in the last code cell's output:\n{final}"
  accuracy, count = float(match.group(1)), int(match.group(2))
  assert count == 359, final
  assert accuracy > _MIN_ACCURACY, final
