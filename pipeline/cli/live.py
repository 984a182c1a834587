"""The live commands of the ``speechpipe`` CLI: ``serve``, ``stream`` and ``mic``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from speechpipe.pipeline.cli.args import add_config_arguments, config_from_args
from speechpipe.pipeline.review.settings import LEVELS
from speechpipe.pipeline.server.settings import DEFAULT_URL

if TYPE_CHECKING:
    from speechpipe.pipeline.config import Config
    from speechpipe.pipeline.server.parts import ServerPart
    from speechpipe.telemetry.setup import Telemetry


def register(sub: Any) -> None:
    """Add the live subcommands to the CLI's subparsers."""
    s = sub.add_parser(
        "serve",
        help="run the live transcription server (WebSocket)",
        description="Serve live transcription on ws://HOST:PORT/stream, the browser client on /, and "
        "/healthz, /readyz, /metrics. SIGTERM or Ctrl-C drains: open streams get their last finals.",
    )
    s.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: 8765; 0 picks a free one)")
    s.add_argument("--token", help="require this bearer token (default: $SPEECHPIPE_TOKEN; none when unset)")
    s.add_argument(
        "--admin-token",
        help="bearer token of the admin API, /admin/* (default: $SPEECHPIPE_ADMIN_TOKEN; without one it answers 403)",
    )
    s.add_argument(
        "--reviewer-token",
        help="bearer token of the review API and /review (default: $SPEECHPIPE_REVIEWER_TOKEN; without one: 403)",
    )
    s.add_argument(
        "--keys",
        metavar="FILE",
        help="named API keys: a TOML file with [[auth.keys]] entries (name, token_sha256, scopes), "
        "added to the config's [auth] keys; see docs/protocol.md, Authentication",
    )
    s.add_argument(
        "--db",
        help="the review queue: a SQLite file (created) or postgresql://... ([review] db); a PostgreSQL URL is "
        "also where replicas share the deployment ([deploy] db)",
    )
    s.add_argument("--automation", choices=LEVELS, help="[automation] level")
    s.add_argument("--baseline", help="drift monitoring against this profile (speechpipe baseline build)")
    s.add_argument("--max-streams", type=int, help="concurrent streams (default: 16)")
    s.add_argument(
        "--partial-interval", type=float, metavar="S", help="seconds of new audio between partials (default: 1.0)"
    )
    s.add_argument("--no-partials", action="store_true", help="send finals only")
    s.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    add_config_arguments(s)
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser(
        "stream",
        help="stream audio files to a live server",
        description="Send files to a live server as streams (several files = concurrent streams) and print "
        "the finals. Exit code 1 if any stream got an error.",
    )
    c.add_argument("files", nargs="+", help="audio files (any rate; mono or stereo)")
    c.add_argument("--url", default=DEFAULT_URL, help=f"server endpoint (default: {DEFAULT_URL})")
    c.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible (default: 1)")
    c.add_argument("--frame-ms", type=float, default=20.0, help="audio per WebSocket message (default: 20)")
    c.add_argument("--token", help="bearer token (default: $SPEECHPIPE_TOKEN)")
    c.add_argument("--no-partials", action="store_true", help="ask for finals only")
    c.add_argument("--json", action="store_true", help="print every server message as a JSON line")
    c.add_argument(
        "--reconnect",
        type=int,
        default=5,
        metavar="N",
        help="resume a stream whose connection breaks up to N times (docs/protocol.md, Resume; default: 5; 0: never)",
    )
    c.set_defaults(func=cmd_stream)

    m = sub.add_parser(
        "mic",
        help="stream the microphone to a live server",
        description="Capture the default microphone and print partials in place and finals as lines.",
    )
    m.add_argument("--url", default=DEFAULT_URL, help=f"server endpoint (default: {DEFAULT_URL})")
    m.add_argument("--token", help="bearer token (default: $SPEECHPIPE_TOKEN)")
    m.add_argument("--device", help="input device name or index (default: the system default)")
    m.add_argument(
        "--reconnect", type=int, default=5, metavar="N", help="resume after a broken connection up to N times"
    )
    m.set_defaults(func=cmd_mic)


def server_parts(config: Config, telemetry: Telemetry | None = None) -> list[ServerPart]:
    """The parts of a server of ``config`` (:mod:`speechpipe.pipeline.server.parts`): telemetry
    (given ``telemetry``, started with ``metrics_page=True``), the deployment's admin API and
    feedback, drift monitoring, the review queue, the OpenAI API and the dashboard, which is given
    what it shows of the others. Raises :class:`~speechpipe.pipeline.config.ConfigError` for a
    baseline or review database that cannot be opened."""
    from speechpipe.pipeline.dashboard.part import DashboardPart
    from speechpipe.pipeline.deploy.part import DeployPart
    from speechpipe.pipeline.monitoring.part import DriftPart
    from speechpipe.pipeline.openai_api.part import OpenAIPart
    from speechpipe.pipeline.review.part import ReviewPart
    from speechpipe.pipeline.telemetry_part import TelemetryPart

    observed = TelemetryPart(telemetry, config) if telemetry is not None else None
    drift, review = DriftPart(config.monitoring), ReviewPart(config)
    board = DashboardPart(observed.prometheus if observed else None, drift.figures, review.dashboard)
    parts = [DeployPart(), drift, review, OpenAIPart(config.server), board]
    return ([observed] if observed else []) + parts


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio  # the live commands import what they use: transcribe starts without it

    from speechpipe.pipeline.config import ConfigError
    from speechpipe.pipeline.observability import start_telemetry
    from speechpipe.pipeline.server.auth import Principals
    from speechpipe.pipeline.server.keys import read_keys_file
    from speechpipe.pipeline.server.serve_loop import serve_forever
    from speechpipe.pipeline.server.speech_server import SpeechServer
    from speechpipe.pipeline.server.tokens import admin_token_from_env, reviewer_token_from_env, token_from_env

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {
        "server.host": args.host,
        "server.port": args.port,
        "server.max_streams": args.max_streams,
        "server.partial_interval_s": args.partial_interval,
        "server.partials": False if args.no_partials else None,
        "monitoring.baseline": args.baseline,
        "review.db": args.db,
        # PostgreSQL: the replicas given it share the deployment too (its state, gates, ledger)
        "deploy.db": args.db if args.db and args.db.startswith(("postgresql://", "postgres://")) else None,
        "automation.level": args.automation,
    }
    args.overrides = list(args.overrides) + [f"{k}={_toml(v)}" for k, v in overrides.items() if v is not None]
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one line per Whisper call otherwise
    config = config_from_args(args)
    keys = config.auth.keys
    if args.keys:
        try:
            keys += read_keys_file(args.keys).keys
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    principals = Principals.from_tokens(
        stream=token_from_env(args.token),
        admin=admin_token_from_env(args.admin_token),
        reviewer=reviewer_token_from_env(args.reviewer_token),
        keys=keys,
    )
    telemetry = start_telemetry(config, mode="live", metrics_page=True)
    server = SpeechServer(config, parts=server_parts(config, telemetry), principals=principals)
    asyncio.run(serve_forever(server))
    return 0


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool) else str(value)


def cmd_stream(args: argparse.Namespace) -> int:
    import asyncio

    from speechpipe.pipeline.clients.client import stream_file
    from speechpipe.pipeline.server.speech_server import token_from_env

    token = token_from_env(args.token)
    many = len(args.files) > 1

    def printer(name: str):
        def on_message(msg: dict) -> None:
            prefix = f"{name}: " if many else ""
            if args.json:
                print(json.dumps({"file": name, **msg} if many else msg), flush=True)
            elif msg["type"] == "final" and msg["text"]:
                print(
                    f"{prefix}[{msg['start']:7.2f}-{msg['end']:7.2f}] {msg['text']}  ({msg['latency_s']:.2f} s)",
                    flush=True,
                )
            elif msg["type"] == "error":
                print(f"speechpipe: {prefix}server error {msg['code']}: {msg['message']}", file=sys.stderr, flush=True)

        return on_message

    async def run_all():
        return await asyncio.gather(
            *(
                stream_file(
                    args.url,
                    f,
                    speed=args.speed,
                    frame_ms=args.frame_ms,
                    token=token,
                    partials=not args.no_partials,
                    on_message=printer(f),
                    reconnect=args.reconnect,
                )
                for f in args.files
            ),
            return_exceptions=True,
        )

    failed = False
    for f, result in zip(args.files, asyncio.run(run_all())):
        if isinstance(result, BaseException):
            failed = True
            print(f"speechpipe: {f}: {_describe(result)}", file=sys.stderr)
        elif result.errors or result.end is None:
            failed = True
            if result.end is None and not result.errors:
                print(
                    f"speechpipe: {f}: connection closed ({result.close_code} {result.close_reason})", file=sys.stderr
                )
    return 1 if failed else 0


def cmd_mic(args: argparse.Namespace) -> int:
    import asyncio

    from speechpipe.pipeline.clients.mic import MicError, run_mic
    from speechpipe.pipeline.server.speech_server import token_from_env

    device = int(args.device) if args.device and args.device.isdigit() else args.device
    try:
        result = asyncio.run(run_mic(args.url, token_from_env(args.token), device, reconnect=args.reconnect))
    except MicError as exc:
        print(f"speechpipe: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"speechpipe: {_describe(exc)}", file=sys.stderr)
        return 1
    return 1 if result.errors else 0


def _describe(exc: BaseException) -> str:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        hint = " (missing or wrong --token)" if code == 401 else ""
        return f"server refused the connection: HTTP {code}{hint}"
    if isinstance(exc, ConnectionRefusedError | OSError):
        return f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}"
