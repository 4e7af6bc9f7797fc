"""State backends, installed as ``arrowflow.backends``: memory, arrow (IPC files), lmdb, sql.

The engine never imports this package: it names the backends through
:mod:`arrowflow.registry` (group ``state``: ``"memory"`` ->
``"arrowflow.backends.memory:MemoryBackend"``, ...), which imports a backend's module the first
time a run asks for it (``flow.run(state="lmdb")``). A backend imports only
``arrowflow.errors``, ``arrowflow._foundation`` and the interface it implements,
:mod:`arrowflow.state`; a third-party backend registers the same way (see ``docs/plugins.md``)
and runs the same conformance suite, :mod:`arrowflow.testing.state_conformance`.
"""
