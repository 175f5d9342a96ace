"""Error types of headatlas. Each message names the bad input and what to do about it."""

from __future__ import annotations


class HeadAtlasError(Exception):
    """Base class: the CLI prints these as one line, never as a traceback."""


class WeightSourceError(HeadAtlasError):
    """A checkpoint could not be found or read (missing path, no weights, corrupt file)."""


class UnsafeWeightsError(WeightSourceError):
    """Only pickle weights were found and the user did not opt in to loading them."""


class UnsupportedArchitecture(HeadAtlasError):
    """The checkpoint's ``model_type`` has no adapter."""


class ShapeMismatchError(HeadAtlasError):
    """A tensor's shape disagrees with what the config implies."""


class RelationFileError(HeadAtlasError):
    """A relation file is malformed, empty, or has no pair that survives tokenisation."""


class ResultsError(HeadAtlasError):
    """A results directory is missing or does not hold what a command needs."""


class ResultsMismatchError(ResultsError):
    """A file beside a manifest is not the one the manifest vouches for (edited, replaced,
    or left half-new by a run that failed)."""


class DescribeError(HeadAtlasError):
    """A description backend failed in a way the user must fix (bad URL, missing key...)."""


class ValidationInputError(HeadAtlasError):
    """Validation cannot run on the given model / relations / options."""


class OptionError(HeadAtlasError):
    """A command-line or API option has an invalid value."""


class OutputFormatError(HeadAtlasError):
    """An output path has an extension the writer cannot produce."""


class TooManyModelsError(HeadAtlasError):
    """More results folders than one figure can lay out."""


class UnknownRelationError(ResultsError):
    """A relation was asked for that the results folder does not hold."""
