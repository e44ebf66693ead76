"""Errors in training data that a user can fix: a missing frame, a bad CSV row, an unknown class."""

from __future__ import annotations

from stream.errors import EpicError


class DataError(EpicError):
    """The training data is missing, malformed or inconsistent; the message names the file or row."""

    def __init__(self, text: str):
        # A DataLoader worker's exception comes back to the main process rebuilt as
        # DataError("Caught DataError in DataLoader worker ...\nOriginal Traceback ...\n
        # train.errors.DataError: <text>"). Keep only <text>, so the CLI still prints one line
        # that names the file instead of "Caught DataError in DataLoader worker process 0.".
        marker = f"{type(self).__name__}: "
        if text.startswith("Caught ") and "DataLoader worker" in text and marker in text:
            text = text.rsplit(marker, 1)[1].strip()
        super().__init__(text)
