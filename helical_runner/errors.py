"""Errors a user can act on. The CLI prints each as one line on stderr and exits with its code."""

import os


class RunnerError(Exception):
    """A failure with a message meant for the person who started the run."""

    # sysexits.h codes, so a DAG can tell bad input (don't retry) from an outage (retry)
    exit_code = 70  # EX_SOFTWARE


class InputError(RunnerError):
    """The input, a flag or a profile is wrong: retrying will not help."""

    exit_code = 65  # EX_DATAERR


class UnavailableError(RunnerError):
    """A service (S3, the model cache) could not be reached: a retry may succeed."""

    exit_code = 69  # EX_UNAVAILABLE


def describe(path: str | os.PathLike) -> str:
    """Short quoted name of an object for error messages."""
    return f"'{os.fspath(path)}'"
