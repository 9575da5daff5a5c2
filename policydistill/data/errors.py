"""The one error every dataset reader and writer raises for bad input.

``DatasetError`` subclasses ``ValueError`` so the CLI prints its message as a one-paragraph
user error. Every message says what is wrong, where (file, episode, frame, column) and what
to do about it. Readers wrap any failure to decode a file (truncated parquet, broken PNG,
corrupt zarr chunk, malformed JSON) in a ``DatasetError`` whose cause is the original error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DatasetError(ValueError):
    """A dataset that cannot be read or written as it is; the message says what to do."""


@contextmanager
def reading(path: str | Path, what: str, hint: str = "") -> Iterator[None]:
    """Turn any failure while decoding ``path`` into a DatasetError naming the file.

    A file that fails to decode is a bad file whatever the library's exception type
    (pyarrow raises ArrowInvalid/OSError, PIL raises SyntaxError for a broken PNG, numcodecs
    RuntimeError for a corrupt chunk), so the boundary catches them all; the original
    exception is kept as ``__cause__`` for ``--debug``."""
    try:
        yield
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - the decode boundary; MemoryError too (a corrupt header can claim a huge size)
        msg = f"could not read {what} {path}: {type(exc).__name__}: {exc}".rstrip()
        msg += (
            f". {hint}"
            if hint
            else (
                ". The file is truncated or corrupt: re-create it (re-run the conversion or "
                "re-download the dataset) and check that the disk is not full."
            )
        )
        raise DatasetError(msg) from exc
