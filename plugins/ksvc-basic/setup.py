"""Builds ksvc-basic's optional compiled loops; everything else is in pyproject.toml.

``ksvc_basic/lane.c`` (the per-thread lanes, a CPython extension: it makes
and resolves Python objects) and ``ksvc_basic/express.c`` (the dispatcher's
express lane, cffi API mode). When a build fails (no compiler, no headers)
the package still installs: lanes are then off (every call takes the shared
channel) and the express lane runs its pure-Python reference, and each says
so.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).parent
PACKAGE = HERE / "ksvc_basic"
FLAGS = ["-O2", "-std=gnu11"]
TRANSLATION = "ksvc_basic/translation.h"  # included by both: the one syscall -> SQE translation
WAITER = "ksvc_basic/waiter.h"  # included by lane.c: the futures of loop entries


def _express_extension() -> list[Extension]:
    try:
        import cffi
    except ImportError:
        print("ksvc-basic: cffi is missing at build time; the express lane will run its reference loops",
              file=sys.stderr)
        return []
    spec = importlib.util.spec_from_file_location("_ksvc_express_cdef", PACKAGE / "express_cdef.py")
    assert spec is not None and spec.loader is not None
    cdef = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cdef)
    builder = cffi.FFI()
    builder.cdef(cdef.STRUCTS + cdef.FUNCTIONS)
    builder.set_source("ksvc_basic._express", (PACKAGE / "express.c").read_text())
    out = HERE / "build" / "cffi"
    out.mkdir(parents=True, exist_ok=True)
    builder.emit_c_code(str(out / "_express.c"))
    return [Extension("ksvc_basic._express", sources=[os.path.relpath(out / "_express.c", HERE)],
                      include_dirs=["ksvc_basic"], depends=[TRANSLATION], extra_compile_args=FLAGS)]


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; a failure leaves the pure paths in charge."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure degrades, never breaks the install
            print(f"ksvc-basic: the compiled loops were not built ({exc})", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"ksvc-basic: building {ext.name} failed ({exc})", file=sys.stderr)


LANE = Extension("ksvc_basic._lane", sources=["ksvc_basic/lane.c"], depends=[TRANSLATION, WAITER],
                 extra_compile_args=FLAGS)

setup(ext_modules=[LANE, *_express_extension()], cmdclass={"build_ext": OptionalBuildExt})
