"""Errors a user can fix.

Everything raised as an ``EpicError`` is the user's to fix (a path, a flag, a model file), so the
CLIs print its message as one line and exit non-zero. Anything else is a bug and keeps its
traceback. train/ and export/ subclass these so that one ``except EpicError`` covers them all.
"""

from __future__ import annotations


class EpicError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""

    exit_code = 2


class OptionError(EpicError):
    """A command-line option has a value that cannot work."""


class SourceError(EpicError):
    """The video source cannot be opened or read."""


class ModelError(EpicError):
    """The model file is missing or is not an ONNX model."""


class ContractError(ModelError):
    """The ONNX model does not meet the epic-stream model contract."""


class ProviderError(EpicError):
    """The requested ONNX Runtime execution provider cannot be used here."""


class OutputError(EpicError):
    """An output (recording, events file, exported model) cannot be written."""


class ServerError(EpicError):
    """The inference server (``--server``) is down, lacks the model, or serves another model."""


class InferenceUnavailable(Exception):
    """Inference cannot run for now (a lost or restarting server); it may come back.

    Not an :class:`EpicError` (the user cannot fix it by changing the command) and not a bug: the
    scheduler pauses predictions, retries with backoff and reports the outage.
    """
