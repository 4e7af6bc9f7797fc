# The C extension's surface (backends/_lmdbc.c, built by setup.py), for the type checker. Its
# contract is the pure-Python fallback's, ``_PyEnv`` in backends/lmdb.py; every name not
# listed here is typed Any.
from typing import Any

lmdb_version: str

def __getattr__(name: str) -> Any: ...
