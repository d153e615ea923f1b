"""The ``ksvc`` command: ``plugins``, ``probe``, ``demo``, ``soak``, ``bench``.

Every failure a user can cause (a missing plugin, an unknown name, a
kernel without io_uring) ends in one sentence on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ksvc_host.errors import KsvcError
from ksvc_host.plugins import ENV_PLUGINS, REGISTER_HOOKS, PluginManager, get_plugin_manager
from ksvc_host.selection import PRESETS
from ksvc_host.traits import TRAITS


def _plugins_data(pm: PluginManager) -> dict[str, Any]:
    defaults = PRESETS["default"]
    impls = []
    for trait in REGISTER_HOOKS:
        for name in pm.names(trait):
            impl = pm.implementations[trait][name]
            impls.append(
                {
                    "trait": trait,
                    "name": name,
                    "distribution": impl.distribution,
                    "version": impl.version,
                    "plugin": impl.plugin,
                    "default": defaults.get(trait) == name,
                    "description": impl.description,
                }
            )
    from ksvc_host import fastpath

    return {
        "fast_path": {"implementation": fastpath.IMPLEMENTATION, "reason": fastpath.REASON},
        "filter": {
            "KSVC_PLUGINS": pm.filter,
            "excluded": [p.as_dict() for p in pm.excluded.values()],
            "not_installed": list(pm.unmatched),
        },
        "plugins": [p.as_dict() for p in pm.plugins.values()],
        "implementations": impls,
        "conflicts": [
            {"trait": t, "name": n, "distributions": [c.distribution for c in claims]}
            for (t, n), claims in pm.conflicts.items()
        ],
    }


def _nothing_loaded(pm: PluginManager) -> str:
    """One sentence for ``ksvc plugins`` when no plugin loaded: what is installed, and what to do."""
    excluded = pm.excluded_distributions()
    if excluded:
        one = len(excluded) == 1
        return (
            f"No KSVC plugins loaded: {', '.join(excluded)} {'is' if one else 'are'} installed but not loaded, "
            f"as {pm.filter_note()} excludes {'it' if one else 'them'}{pm.unmatched_note()}; "
            f"add the ones you want to {ENV_PLUGINS} (ksvc-basic for the defaults) or unset the variable."
        )
    if pm.filter:
        return (
            f"No KSVC plugins installed ({pm.filter_note()} names only plugins that are not installed). "
            f"Install the defaults with: pip install ksvc-basic"
        )
    return "No KSVC plugins installed. Install the defaults with: pip install ksvc-basic"


def cmd_plugins(args: argparse.Namespace) -> int:
    """List installed plugins and their implementations per trait."""
    pm = get_plugin_manager()
    data = _plugins_data(pm)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data["plugins"]:
        print(_nothing_loaded(pm))
        return 0
    print(f"{'TRAIT':<16} {'NAME':<16} {'DISTRIBUTION':<18} {'VERSION':<9} DEFAULT")
    for row in data["implementations"]:
        mark = "*" if row["default"] else ""
        print(f"{row['trait']:<16} {row['name']:<16} {row['distribution']:<18} {row['version']:<9} {mark}")
    for p in data["plugins"]:
        if p["error"]:
            print(f"plugin {p['name']} ({p['distribution']}) failed: {p['error']}", file=sys.stderr)
    for c in data["conflicts"]:
        print(
            f"conflict: {c['trait']} {c['name']!r} is claimed by {' and '.join(c['distributions'])}",
            file=sys.stderr,
        )
    excluded = pm.excluded_distributions()
    if excluded:
        print(f"installed but not loaded: {', '.join(excluded)} ({pm.filter_note()} excludes them)", file=sys.stderr)
    if pm.unmatched:
        names = ", ".join(pm.unmatched)
        verb = "is not an installed KSVC plugin" if len(pm.unmatched) == 1 else "are not installed KSVC plugins"
        print(f"{pm.filter_note()} names {names}, which {verb}; check the spelling or install it", file=sys.stderr)
    missing = [t for t in TRAITS if not pm.names(t)]
    if missing:
        if pm.is_excluded("ksvc-basic"):
            how = f"ksvc-basic is installed but not loaded: {pm.exclusion_advice(['ksvc-basic'])}"
        else:
            how = "pip install ksvc-basic"
        print(f"No implementation of {', '.join(missing)}: {how}", file=sys.stderr)
    fp = data["fast_path"]
    print(f"\nfast path: {fp['implementation']}" + (f" ({fp['reason']})" if fp["reason"] else " (compiled loops)"))
    return 0


def _probe_data(kernel: str | None) -> dict[str, Any]:
    from ksvc_host.abi.io_uring import IoringOp, opcodes_for_kernel
    from ksvc_host.abi.syscalls import SYSCALL_NAMES
    from ksvc_host.routing import TableRouter, tier_counts

    if kernel is not None:
        router: Any = TableRouter(opcodes_for_kernel(kernel), description=f"static table for kernel {kernel}")
        source = f"static table for kernel {kernel}"
        release = kernel
    else:
        from ksvc_host.instance import build_instance

        inst = build_instance(dispatcher="inline", router="probe")
        try:
            router = inst.router
        finally:
            inst.close()
        source = "probed from the running kernel"
        release = os.uname().release
    features = []
    if kernel is None:
        from ksvc_host.kernel_features import probe_features

        pm = get_plugin_manager()
        for f in probe_features(router.supported_opcodes):
            kind = "buffer_provider" if f.feature == "provided-ring" else "io_feature"
            features.append({**f._asdict(), "installed": pm.implementations[kind].get(f.feature) is not None})
    table = router.table()
    counts = tier_counts(table)
    ops = sorted(router.supported_opcodes)
    names = {int(o): o.name for o in IoringOp}
    return {
        "kernel": release,
        "source": source,
        "supported_opcodes": [names.get(o, str(o)) for o in ops],
        "opcode_count": len(ops),
        "tiers": {f"T{int(t)}": n for t, n in counts.items()},
        "features": features,
        "routes": {
            SYSCALL_NAMES[nr]: {
                "nr": nr,
                "tier": int(r.tier),
                "opcode": names.get(r.opcode) if r.opcode is not None else None,
            }
            for nr, r in sorted(table.items())
        },
    }


def cmd_probe(args: argparse.Namespace) -> int:
    """Show the routing table: of the running kernel, or of a named one."""
    data = _probe_data(args.kernel)
    pm = get_plugin_manager()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"kernel {data['kernel']} ({data['source']})")
    print(f"io_uring opcodes supported: {data['opcode_count']}")
    print("  " + " ".join(data["supported_opcodes"]))
    print("tiers: " + "  ".join(f"{k}={v}" for k, v in data["tiers"].items()))
    if data["features"]:
        print("io_uring features:")
        for f in data["features"]:
            kernel_says = "yes" if f["supported"] else "NO "
            if f["installed"]:
                plugin = "installed"
            elif pm.is_excluded(f["distribution"]):
                plugin = f"installed, not loaded ({pm.filter_note()})"
            else:
                plugin = f"pip install {f['distribution']}"
            print(f"  {f['feature']:<17} kernel: {kernel_says} ({f['detail']}); plugin {f['distribution']}: {plugin}")
    width = max(len(n) for n in data["routes"])
    for name, r in data["routes"].items():
        if r["tier"] == 3 and not args.all:
            continue
        extra = f" via {r['opcode']}" if r["opcode"] else ""
        print(f"  {name:<{width}} T{r['tier']}{extra}")
    if not args.all:
        print(f"({data['tiers']['T3']} Tier 3 syscalls hidden; --all shows them)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Push real calls through tiers 0, 1 and 2 and compare with the direct calls."""
    from ksvc_host.demo import run_demo

    return run_demo(io_backend=args.io_backend, preset=args.preset)


def cmd_soak(args: argparse.Namespace) -> int:
    """Mixed operations on every installed preset, then count what was lost or leaked."""
    from ksvc_host.soak import run_soak

    report = run_soak(ops=args.ops, threads=args.threads, presets=args.preset or None, quiet=args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    if report.get("error"):
        print(f"ksvc: {report['error']}", file=sys.stderr)
        return 2
    return 0 if report["ok"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """Run benchmark workloads; progress on stderr, the table on stdout, JSON to a file."""
    from ksvc_host import bench

    if args.markdown_from:
        with open(args.markdown_from) as f:
            print(bench.Report.from_json(json.load(f)).markdown())
        return 0
    unknown = [w for w in args.workloads if w not in bench.WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(bench.WORKLOADS)}")
    if args.scale <= 0:
        raise ValueError(f"--scale must be positive, got {args.scale}")
    report = bench.run(args.workloads, scale=args.scale, directory=args.dir)
    print(report.table())
    path = args.json or "ksvc-bench.json"
    report.write_json(path)
    print(f"\nJSON written to {path}; machine: {report.machine['cpu']}, {report.machine['cores']} cores, "
          f"kernel {report.machine['kernel']}, fast path {report.machine['fast_path']}")  # fmt: skip
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    """Run the echo server until interrupted."""
    import asyncio

    from ksvc_host.net.echo import serve

    selection: dict[str, Any] = {}
    if args.preset:
        selection["preset"] = args.preset
    if args.dispatcher:
        selection["dispatcher"] = args.dispatcher
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    asyncio.run(serve(args.host, args.port, **selection))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ksvc``."""
    parser = argparse.ArgumentParser(prog="ksvc", description="KSVC: syscalls offloaded through a ring.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed plugins and implementations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("probe", help="show how each syscall is routed on this kernel")
    p.add_argument(
        "--kernel", metavar="VERSION", help="use the static table of a named kernel (6.8, 6.11, 6.14, newest)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="also list Tier 3 (not offloaded) syscalls")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("demo", help="run real calls through every tier, side by side with direct calls")
    p.add_argument("--io-backend", default=None, help="io backend name, e.g. basic or sqpoll")
    p.add_argument("--preset", default=None, help="preset name (default, server)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("soak", help="many mixed operations on every installed preset; report losses and leaks")
    p.add_argument("--ops", type=int, default=1_000_000, help="operations per preset (default 1 000 000)")
    p.add_argument("--threads", type=int, default=4, help="blocking threads besides the asyncio loop")
    p.add_argument("--preset", action="append", help="limit to this preset (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_soak)
    p = sub.add_parser("echo", help="an echo server on KSVC (accept, recv and send through the channel)")
    p.add_argument("--port", type=int, default=8888, help="TCP port (default 8888; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--preset", default=None, help="preset name (default, server)")
    p.add_argument("--dispatcher", choices=("thread", "inline"), default=None, help="dispatcher mode")
    p.set_defaults(func=cmd_echo)
    p = sub.add_parser("bench", help="measure KSVC beside the alternatives (W1-W6); see README, Performance")
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="w1 ... w6, echo (default: w1 ... w6)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every operation count (0.1 for a quick run)")
    p.add_argument("--json", metavar="PATH", help="where to write the JSON results (default ksvc-bench.json)")
    p.add_argument("--dir", metavar="DIR", help="directory for the data files (default: the temp directory)")
    p.add_argument("--markdown-from", metavar="JSON", help="print an earlier run's JSON as Markdown; run nothing")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ksvc`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (KsvcError, ValueError) as exc:
        print(f"ksvc: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"ksvc: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
