"""Export's own user-fixable errors; each is an EpicError, so every CLI's one boundary covers them."""

from __future__ import annotations

from stream.errors import OptionError, OutputError


class ClassNamesError(OptionError):
    """A class-names file cannot be read, or its names do not fit the model's head."""


class ExportError(OutputError):
    """The model could not be written as an ONNX file that meets the model contract."""


class ParityError(ExportError):
    """ONNX Runtime and torch disagree on the exported model by more than the tolerance."""


class CalibrationError(OptionError):
    """The --calibration folder gives no clips to calibrate int8 on."""
