"""The cache directory of ntkdyn (default base models, fetched and converted checkpoints): one definition."""
from __future__ import annotations

import os

__all__ = ["cache_root"]


def cache_root(cache_dir: str | None = None) -> str:
    """The cache directory: ``cache_dir`` if given, else ``$NTKDYN_CACHE``, else ``$XDG_CACHE_HOME/ntkdyn`` or
    ``~/.cache/ntkdyn``."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    if os.environ.get("NTKDYN_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["NTKDYN_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "ntkdyn"))
