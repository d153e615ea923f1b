"""Builds the optional compiled fast path; everything else is in pyproject.toml.

The C loops in ``ksvc_host/fastpath/fastpath.c`` are compiled with cffi in
API mode, and ``bytes_alloc.c`` (bytes objects for reads to fill) as a plain
extension. When that fails (no compiler, no headers) the package still
installs and runs the same loops in pure Python, and says so.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).parent
FASTPATH = HERE / "ksvc_host" / "fastpath"


def _fastpath_extension() -> list[Extension]:
    try:
        import cffi
    except ImportError:
        print("ksvc-host: cffi is missing at build time; installing without the compiled fast path", file=sys.stderr)
        return []
    spec = importlib.util.spec_from_file_location("_ksvc_cdef", FASTPATH / "cdef.py")
    assert spec is not None and spec.loader is not None
    cdef = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cdef)
    builder = cffi.FFI()
    builder.cdef(cdef.STRUCTS + cdef.FUNCTIONS)
    builder.set_source("ksvc_host._fastpath", (FASTPATH / "fastpath.c").read_text())
    out = HERE / "build" / "cffi"
    out.mkdir(parents=True, exist_ok=True)
    c_file = builder.emit_c_code(str(out / "_fastpath.c"))
    del c_file
    return [Extension("ksvc_host._fastpath", sources=[os.path.relpath(out / "_fastpath.c", HERE)],
                      extra_compile_args=["-O2", "-std=gnu11"])]


def _bytes_alloc_extension() -> list[Extension]:
    # The one helper that needs the CPython API (bytes objects the kernel reads into); cffi cannot return objects.
    return [Extension("ksvc_host._bytes_alloc", sources=["ksvc_host/fastpath/bytes_alloc.c"],
                      extra_compile_args=["-O2", "-std=gnu11"])]


class OptionalBuildExt(build_ext):
    """Compile the fast path if possible; a failure leaves the pure-Python loops in charge."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure degrades, never breaks the install
            print(f"ksvc-host: the compiled fast path was not built ({exc}); the pure-Python loops will be used",
                  file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"ksvc-host: building {ext.name} failed ({exc}); the pure-Python loops will be used",
                  file=sys.stderr)


setup(ext_modules=_fastpath_extension() + _bytes_alloc_extension(),
      cmdclass={"build_ext": OptionalBuildExt})
