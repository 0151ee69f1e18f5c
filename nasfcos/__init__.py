"""nasfcos: search, compile, export and benchmark NAS-FCOS decoders.

The public Python API (:mod:`nasfcos.api`): ``nasfcos.compile``, ``export``, ``check``,
``bench``, ``train``, ``evaluate``, ``predict``; served on first use, so ``import nasfcos``
imports neither torch nor any other heavy library.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from nasfcos.errors import BackendUnavailable, CacheError, GenotypeError, NasfcosError

#: The functions of :mod:`nasfcos.api` that ``nasfcos.<name>`` serves.
API: tuple[str, ...] = ("compile", "export", "check", "bench", "train", "evaluate", "predict")


def __getattr__(name: str) -> Any:
    if name in API:
        from nasfcos import api  # lazy: the API layer sits above every other

        return getattr(api, name)
    raise AttributeError(f"module 'nasfcos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


__all__ = ["__version__", "NasfcosError", "GenotypeError", "BackendUnavailable", "CacheError", *API]
