"""Backends: one module each, all behind the protocol in ``base``.

Importing this package imports no framework; each backend imports its own runtime when
it is checked or loaded.
"""

from .base import BACKENDS, Backend, BackendOptions, Session, get_backend

__all__ = ["BACKENDS", "Backend", "BackendOptions", "Session", "get_backend"]
