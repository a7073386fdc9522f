"""The importer's refusal: a model, or a part of one, that resnetc's ops cannot express exactly."""

from __future__ import annotations

from resnetc.core.errors import ResnetcError


class ImportRefused(ResnetcError):
    """A source model that cannot be imported exactly: the first module (path and class) or call that no
    registered op expresses, a structure the spec format cannot say, or an import whose proof failed.
    Nothing is written."""


class IncompleteImport(ImportRefused):
    """`--partial`: the model cannot be imported whole; `text` is the spec of the layers before the first that
    cannot, marked as incomplete and unproven, for the user to finish."""

    def __init__(self, message: str, text: str, stem: str) -> None:
        super().__init__(message)
        self.text = text
        self.stem = stem  # the outputs' stem: DIR/<stem>.partial.yaml
