"""Errors of the report layer: bad figure requests, each with a message saying what to do."""

from __future__ import annotations

from headatlas.errors import HeadAtlasError, ResultsError


class OutputFormatError(HeadAtlasError):
    """The output path has an extension the writer cannot produce."""


class TooManyModelsError(HeadAtlasError):
    """More results folders than one figure can lay out."""


class UnknownRelationError(ResultsError):
    """A relation was asked for that the results folder does not hold."""
