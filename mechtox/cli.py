"""The ``mechtox`` command line. ``main(argv)`` runs in-process (tests call it directly).

The CLI only parses: each command's options come from its config dataclass in
:mod:`mechtox.jobs`, which validates them before any model loads, and the job does the work.
Every bad input a user can make is a one-line ``mechtox: error: ...`` on stderr and exit
status 2, without a traceback; an unexpected failure is one line and exit status 1 (the
traceback with ``MECHTOX_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mechtox.errors import MechtoxError, closest
from mechtox.jobs import COMMANDS, Context, execute
from mechtox.jobs._base import add_options, from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechtox",
        description="Mechanistic interpretability of toxicity: probes, toxic neurons, interventions, "
                    "DPO attribution. A MODEL is a workspace alias (base, dpo...), a TransformerLens "
                    "model name, smollm2-135m-instruct (offline default), a path (mechtox checkpoint, transformers "
                    "directory or .gguf file), hf:ID (a hub model TransformerLens does not list) or BASE@FILE (a "
                    "state dict over BASE). The options below "
                    "(-w, -q, --seed, --device, --dtype) go before or after COMMAND.",
    )
    add_options(parser, Context, absent_unless_given=True)
    parser.add_argument("--version", action=_Version,
                        help="mechtox's version and those of the libraries it runs on (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (job, config) in COMMANDS.items():
        p = sub.add_parser(name, help=job.HELP)
        add_options(p, Context, absent_unless_given=True)  # given after COMMAND, it wins over before
        add_options(p, config)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; the common options (:class:`~mechtox.jobs.Context`) are set only
    where given, before or after the command (their defaults come from the dataclass). An unknown
    option is an error that names the option it was probably meant to be."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if extra:
        sub = parser
        if getattr(args, "command", None):
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        known = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
        near = {x: closest(x.split("=", 1)[0], known, cutoff=0.7) for x in extra if x.startswith("--")}
        hints = [f"{n} (for {x})" if len(near) > 1 else n for x, n in near.items() if n]
        sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {', '.join(hints)}?" if hints else ""))
    return args


def versions() -> str:
    """``mechtox 0.1.0 (torch ..., transformer-lens ..., transformers ..., Python ...)``, read from the
    installed packages' metadata (nothing heavy is imported)."""
    import platform
    from importlib import metadata

    from mechtox import __version__

    libs = []
    for dist in ("torch", "transformer-lens", "transformers", "peft"):
        try:
            libs.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            libs.append(f"{dist} not installed")
    return f"mechtox {__version__} ({', '.join(libs)}, Python {platform.python_version()})"


class _Version(argparse.Action):
    """``--version``: :func:`versions` on one line (argparse's own action would wrap it)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions())
        parser.exit()


def _unexpected(e: BaseException) -> int:
    if os.environ.get("MECHTOX_DEBUG"):
        raise e
    where = e.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    at = f" at {os.path.basename(where.tb_frame.f_code.co_filename)}:{where.tb_lineno}" if where else ""
    msg = str(e).splitlines()[0] if str(e) else ""
    print(f"mechtox: unexpected error: {type(e).__name__}{': ' + msg if msg else ''}{at} (run with MECHTOX_DEBUG=1 "
          "for the traceback)", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if not args.command:
        build_parser().print_help()
        return 0
    if getattr(args, "quiet", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    job, config = COMMANDS[args.command]
    try:
        ctx = from_args(Context, args)
        cfg = from_args(config, args)
        for spec in cfg.model_specs():
            ctx.ws.resolve_model(spec)  # an unknown model is an error before any data is read
        if getattr(job, "RANDOM", True):
            ctx.seed_all()
        execute(job, cfg, ctx)
        return 0
    except MechtoxError as e:
        print(f"mechtox: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechtox: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no (full disk, no permission, read-only, gone): not a bug
        if os.environ.get("MECHTOX_DEBUG") or e.filename is None:
            return _unexpected(e)
        print(f"mechtox: error: {e.strerror or e}: {e.filename} (run with MECHTOX_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 (one line for the user; the traceback with MECHTOX_DEBUG=1)
        return _unexpected(e)


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
