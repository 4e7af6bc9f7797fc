"""The one compiled part: ``arrowflow.backends._lmdbc``, batch LMDB operations in C.

Everything else is declared in ``pyproject.toml``. The extension builds LMDB from the copy in
``backends/_vendor/lmdb``. It is optional: without a C compiler the install still succeeds and
the ``lmdb`` backend runs on the ``lmdb`` Python binding instead (about 2x slower per key).
"""

from setuptools import Extension, setup

LMDB = "backends/_vendor/lmdb"

setup(
    ext_modules=[
        Extension(
            "arrowflow.backends._lmdbc",
            sources=["backends/_lmdbc.c", f"{LMDB}/mdb.c", f"{LMDB}/midl.c"],
            include_dirs=[LMDB],
            define_macros=[("NDEBUG", "1")],
            # LMDB's own warnings are not ours to fix; keep its symbols out of the module's exports
            extra_compile_args=[
                "-O2",
                "-fvisibility=hidden",
                "-Wno-unused-parameter",
                "-Wno-sign-compare",
                "-Wno-implicit-fallthrough",
            ],
            optional=True,
        )
    ]
)
