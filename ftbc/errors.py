"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Base class: a bad argument, missing data or an unusable file."""


class DataError(UserError):
    """A data folder is missing, empty or has the wrong layout."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupted or does not fit the request."""


class TrainingError(UserError):
    """A training run cannot go on (bad settings, or the loss diverged)."""


def one_line(e: BaseException) -> str:
    """``e``'s message with its whitespace runs collapsed: the CLI prints a UserError as one line."""
    return " ".join(str(e).split())
