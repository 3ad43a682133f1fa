"""Readers of the real on-disk formats, Ray Data transforms, the cache and sample data.

Imports no model: pipelines/ joins preprocessing/ and models/.
"""


class DataError(ValueError):
    """Input data that cannot be used: a missing or empty folder, a corrupt file. The
    message names the path and what is wrong; the CLI prints it as one line."""
