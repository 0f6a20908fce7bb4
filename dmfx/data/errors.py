"""Exceptions raised by :mod:`dmfx.data`.

They live in their own module so that readers, the ``Interactions`` container
and the dataset registry can raise them without importing one another.
"""

from __future__ import annotations

__all__ = ["DataFormatError", "DatasetUnavailableError"]


class DataFormatError(ValueError):
    """A ratings file does not have the expected layout.

    The message always names the file and, for text files, the 1-based line
    number and what was expected there, e.g.
    ``ratings.dat:17: expected 4 fields separated by '::', got 3``,
    so that a user can open the file at the offending line.
    """


class DatasetUnavailableError(RuntimeError):
    """A named dataset could not be downloaded or verified.

    The message is one line and says how to continue with a local copy
    (``--data PATH`` on the command line, ``load_dataset(name, data=PATH)`` in
    Python), because the usual cause is a machine without internet access.
    """
