"""nasfcos: search, compile, export and benchmark NAS-FCOS decoders."""

from __future__ import annotations

__version__ = "0.1.0"

from nasfcos.errors import BackendUnavailable, CacheError, GenotypeError, NasfcosError

__all__ = ["__version__", "NasfcosError", "GenotypeError", "BackendUnavailable", "CacheError"]
