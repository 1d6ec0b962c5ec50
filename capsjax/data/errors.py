"""Errors raised by capsjax's data readers."""

from __future__ import annotations

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(FileNotFoundError):
  """The real dataset a config names cannot be read on this machine.

  The message names what to obtain and the command that prepares it
  (``python -m capsjax.data.prepare ...``). Experiments' entrypoints catch it
  and stop with that one message instead of a traceback.
  """
