"""State backends, installed as ``arrowflow.backends``: memory, arrow (IPC files), lmdb, sql.

The engine finds them by name through ``arrowflow.state.BACKENDS`` (imported on first use);
nothing here is imported by the engine at module level.
"""
