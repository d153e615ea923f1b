"""The C load generator of ``ksvc bench echo`` (``loadgen.c``), built on demand.

A generator in Python saturates its core before a fast server does, which
compresses the ratios between servers; ``loadgen.c`` does the same work
(one message in flight per connection, every byte checked, the latency of
every message) in C. It is compiled the first time it is needed with the
system C compiler into a cache directory (``$XDG_CACHE_HOME/ksvc``, else
``~/.cache/ksvc``), under a name keyed by a hash of the source and the
compiler, so an edited source or another compiler builds afresh.

:func:`generate` runs it and returns what the Python generator returns,
plus ``"generator": "c"``; with no compiler, or a build that fails, it runs
the Python generator instead (``"generator": "python"``) and says why, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("loadgen.c")
CFLAGS = ("-O2", "-Wall", "-Wextra")
"""What the binary is built with (the source is also clean under ``-Werror``)."""

EXIT_MISMATCH = 2
EXIT_SERVER = 3


class EchoMismatch(Exception):
    """An echoed byte differs from what was sent."""


def find_compiler() -> list[str] | None:
    """The C compiler command: the one Python was built with if it is here, else ``cc``, ``gcc`` or ``clang``."""
    candidates: list[list[str]] = []
    configured = sysconfig.get_config_var("CC")
    if configured:
        candidates.append(shlex.split(str(configured)))
    env = os.environ.get("CC")
    if env:
        candidates.insert(0, shlex.split(env))
    candidates += [["cc"], ["gcc"], ["clang"]]
    for cmd in candidates:
        if cmd and shutil.which(cmd[0]):
            return [shutil.which(cmd[0]) or cmd[0], *cmd[1:]]
    return None


def cache_dir() -> Path:
    """Where built binaries are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ksvc"


def build(directory: Path | None = None, compiler: list[str] | None = None) -> tuple[Path | None, str]:
    """Build (or find already built) the generator; return ``(path, "")`` or ``(None, why not)``."""
    cc = compiler if compiler is not None else find_compiler()
    if not cc:
        return None, "no C compiler found (looked for $CC, sysconfig CC, cc, gcc, clang)"
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        return None, f"cannot read {SOURCE}: {exc}"
    key = hashlib.sha256(source + "\0".join([*cc, *CFLAGS]).encode()).hexdigest()[:16]
    places = [directory] if directory is not None else [cache_dir(), Path(tempfile.gettempdir()) / "ksvc-cache"]
    reason = ""
    for place in places:
        binary = place / f"loadgen-{key}"
        if os.access(binary, os.X_OK):
            return binary, ""
        try:
            place.mkdir(parents=True, exist_ok=True)
            # Build beside the final name, then rename: a concurrent build or a killed one leaves no half binary.
            fd, tmp = tempfile.mkstemp(prefix=".loadgen-", dir=place)
            os.close(fd)
        except OSError as exc:
            reason = f"cannot write to {place}: {exc}"
            continue
        try:
            done = subprocess.run([*cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                return None, f"{' '.join(cc)} failed on {SOURCE.name}: {' / '.join(lines[-3:])}"
            os.chmod(tmp, 0o755)
            os.replace(tmp, binary)
            return binary, ""
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"building {SOURCE.name} with {' '.join(cc)} failed: {exc}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None, reason


_built: tuple[Path | None, str] | None = None
_said = False


def binary() -> tuple[Path | None, str]:
    """:func:`build` once per process."""
    global _built
    if _built is None:
        _built = build()
    return _built


def run_c(path: Path | str, port: int, conns: int, msgs: int, size: int, seed: int | None = None,
          timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the binary at *path*; its JSON as a dict, or the error its exit status names."""
    args = [str(path), str(port), str(conns), str(msgs), str(size)] + ([] if seed is None else [str(seed)])
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    err = done.stderr.strip()
    if done.returncode == EXIT_MISMATCH:
        raise EchoMismatch(err)
    if done.returncode == EXIT_SERVER:
        raise (TimeoutError if "no progress" in err else ConnectionError)(err)
    if done.returncode != 0:
        raise OSError(f"loadgen exited with status {done.returncode}: {err}")
    return dict(json.loads(done.stdout))


def generate(port: int, conns: int, msgs: int, size: int, *, say: Callable[[str], None] | None = None,
             seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Drive *conns* connections of *msgs* messages with the C generator (or the Python one when it cannot be built).

    Returns ``msgs_per_s``, ``p50_us``, ``p99_us``, ``generator_cpu`` (its CPU share of the wall time) and
    ``generator`` (``"c"`` or ``"python"``). Why the Python one is used is said once, through *say*
    (default: stderr).
    """
    global _said
    path, reason = binary()
    if path is None:
        if not _said:
            _said = True
            (say or (lambda text: print(text, file=sys.stderr, flush=True)))(
                f"echo: the C load generator is not available ({reason}); using the Python one, "
                "whose own CPU limit compresses the ratios between fast servers")
        from ksvc_host.bench.echo import generate_python  # here: echo imports this module

        return {**generate_python(port, conns, msgs, size), "generator": "python"}
    r = run_c(path, port, conns, msgs, size, seed)
    seconds = float(r["seconds"]) or 1e-9
    return {"msgs_per_s": float(r["msgs_per_s"]), "p50_us": float(r["p50_us"]), "p99_us": float(r["p99_us"]),
            "max_us": float(r["max_us"]), "generator_cpu": float(r["cpu_s"]) / seconds, "generator": "c"}  # fmt: skip
