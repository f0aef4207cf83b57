"""`kerzoo build-ext`: compile the engine's extension ahead of time."""

from __future__ import annotations


def cmd_build_ext(args) -> int:
    from . import build, info_lines

    result = build(verbose=args.verbose)
    for line in info_lines():
        print(line)
    ok = result["cpu"] == "c++"
    print(
        "built"
        if ok
        else "the compiled CPU kernels are not available; the pure-torch reference will run"
    )
    return 0 if ok else 1


def add_cli(sub) -> None:
    p = sub.add_parser(
        "build-ext", help="compile the engine's C++/CUDA extension now (it is cached)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    p.set_defaults(func=cmd_build_ext)
