"""Errors a user can cause: the CLI prints them as one line, the service maps them to HTTP 4xx."""


class InputError(ValueError):
    """Bad user input (file, mask, box, object id, option): the message names the problem."""


class CheckpointError(InputError):
    """A weights file that cannot be read: corrupt, truncated, foreign or of another architecture."""
