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


class SupersededError(RunnerError):
    """A newer attempt of the same step holds its outputs' lease (fencing.py): this one stops writing.
    Not retried: the newer attempt is the one that counts."""

    exit_code = 75  # EX_TEMPFAIL: not this attempt's input or service that failed


class DiskFullError(RunnerError):
    """A disk (scratch, a local output folder) is too small for the step. The input is fine: freeing space,
    a larger $HELICAL_SCRATCH or another worker helps, so a DAG may retry."""

    exit_code = 74  # EX_IOERR


def disk_full(exc: OSError, scratch: str | os.PathLike) -> DiskFullError:
    """The one line for an ENOSPC OSError (Python's own or h5py's, which names the file in its text)."""
    import re
    import shutil

    found = re.search(r"filename = '([^']*)'", str(exc))
    # shutil's copies name the source in filename and the file being written in filename2
    where = exc.filename2 or exc.filename or (found.group(1) if found else None)
    folder = os.path.dirname(os.fspath(where)) if where else os.fspath(scratch)
    try:
        free = f"{size_text(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"no space left on device{f' writing {where}' if where else ''} ({folder}: {free}); "
                         "free some space, or point HELICAL_SCRATCH or the output at a larger disk")


def size_text(n_bytes: float) -> str:
    """Bytes for a message, in decimal units: '4.80 GB', '3.1 MB', '12 kB'."""
    if n_bytes >= 1e9:
        return f"{n_bytes / 1e9:.2f} GB"
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


def describe(path: str | os.PathLike) -> str:
    """Short quoted name of an object for error messages."""
    return f"'{os.fspath(path)}'"
