"""The ``kerzoo`` command.

Subcommands here: list, check-kernel, info. Other parts of kerzoo add their own
(``add_cli(subparsers)`` in the modules of ``SUBCOMMAND_MODULES``): build-ext, train, export,
replay.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from typing import Any

SUBCOMMAND_MODULES = ("kerzoo.engine.cli", "kerzoo.train.cli")
KINDS = ("optimizers", "estimators", "kernels", "projections", "updates")


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    from .plugins import get_registry

    kinds = KINDS if args.kind in (None, "all") else (args.kind,)
    for i, kind in enumerate(kinds):
        registry = get_registry(kind)
        rows = []
        for e in registry.entries():
            detail = ""
            describe = getattr(e.obj, "describe", None)
            if callable(describe) and not isinstance(e.obj, type):
                detail = str(describe())
            rows.append((e.name, e.plugin, e.doc + (f" [{detail}]" if detail else "")))
        if i:
            print()
        print(f"{kind} ({len(rows)})")
        print(_table(rows, ("name", "plugin", "description")) if rows else "  (none registered)")
    return 0


def _load_object(spec: str) -> Any:
    from .plugins import get_registry
    from .registry import UnknownNameError

    if ":" not in spec:
        try:
            return get_registry("kernels")[spec]
        except UnknownNameError as exc:
            raise SystemExit(f"kerzoo check-kernel: {exc} Or pass module:attribute.") from None
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"kerzoo check-kernel: cannot load {spec!r}: {exc}") from None
    return obj() if isinstance(obj, type) else obj


def cmd_check_kernel(args: argparse.Namespace) -> int:
    from .kernels.moments import exact_variance_factor, kernel_moments, variance_factor
    from .registry import RegistrationError

    kernel = _load_object(args.kernel)
    try:
        moments = kernel_moments(kernel)
    except RegistrationError as exc:
        print(f"INVALID: {exc}")
        return 1
    print(moments.table())
    exact = exact_variance_factor(kernel)
    print(
        f"variance factor E[(s K(s))^2] = {variance_factor(kernel):.6g}"
        + (f" (exactly {exact})" if exact is not None else "")
        + " (two-point estimator: 1; legendre3: 6.25)"
    )
    print("valid" if moments.ok else "INVALID: the moment conditions fail (see the table)")
    return 0 if moments.ok else 1


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__
    from .plugins import failed_plugins, loaded_plugins

    print(f"kerzoo {__version__} on Python {platform.python_version()} ({platform.machine()})")
    try:
        import torch

        cuda = (
            f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)"
            if torch.cuda.is_available()
            else "no CUDA device"
        )
        print(f"torch {torch.__version__} ({cuda})")
    except ImportError:
        print("torch: not installed")
    for dist in ("pluggy", "transformers", "peft"):
        print(f"{dist} {_version(dist)}")
    print("\nplugins loaded:")
    for name, source in sorted(loaded_plugins().items()):
        print(f"  {name}  ({source})")
    failures = failed_plugins()
    print(f"plugins failed: {len(failures)}")
    for f in failures:
        print(f"  {f.name}: failed to {f.stage}: {f.reason}")
    try:
        from .engine import info_lines
    except ImportError as exc:
        print(f"\nengine: not available ({exc})")
    else:
        print("\nengine:")
        for line in info_lines():
            print(f"  {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="kerzoo",
        description="Zeroth-order fine-tuning: methods by name, one fast engine, plugins.",
    )
    parser.add_argument("--version", action="version", version=f"kerzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "list", help="list registered optimizers, estimators, kernels, projections, updates"
    )
    p.add_argument("kind", nargs="?", choices=(*KINDS, "all"), help="one kind (default: all)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "check-kernel", help="check a kernel's moment conditions (exit 1 if they fail)"
    )
    p.add_argument("kernel", help="a registered kernel name, or module:attribute")
    p.set_defaults(func=cmd_check_kernel)

    p = sub.add_parser("info", help="versions, plugins loaded and failed, the engine's backends")
    p.set_defaults(func=cmd_info)

    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # that part of kerzoo is not in this checkout
            raise
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
