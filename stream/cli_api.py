"""The ``touchstream`` commands of the gRPC API: ``serve``, ``publish``,
``subscribe`` and ``token``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson

from stream.auth import ROLES, new_token, token_digest
from stream.config import load_config
from stream.errors import RunError, UsageError
from stream.params import load_params, value_settings

Handler = Callable[[argparse.Namespace], int]
DEFAULT_DATA = Path("touchstream-data")
MAX_NAME_CHARS = 64  # as a tokens file takes them


def add_commands(
    commands: Any, add_log_level: Callable[[argparse.ArgumentParser], None]
) -> dict[str, Handler]:
    """Add the API commands to the `touchstream` parser; return handlers."""
    serve = commands.add_parser(
        "serve",
        help="run the engine on the live clock behind the gRPC API",
        description=(
            "Serve the gRPC API (Ingest, Interventions, Customers, health and "
            "reflection) with the engine on the live clock. The ingest log, "
            "the intervention log and the customers live in SQLite files in "
            "--data. Without a tokens file in the configuration, the first "
            "start writes DATA/tokens.toml and an admin token in "
            "DATA/admin.token. SIGINT or SIGTERM stops it gracefully."
        ),
    )
    add_log_level(serve)
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML settings")
    serve.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="host:port to listen on (default: server.listen, 127.0.0.1:50051)",
    )
    serve.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=f"where the logs live (default: server.data, else ./{DEFAULT_DATA})",
    )
    serve.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help="model parameters of `touchstream fit`, reloaded when the file changes",
    )
    serve.add_argument("--horizon", metavar="DURATION", help="the CLV horizon")
    serve.add_argument(
        "--metrics-listen",
        metavar="ADDRESS",
        help="serve Prometheus metrics on http://ADDRESS/metrics (HOST:PORT)",
    )

    publish = commands.add_parser(
        "publish",
        help="send a file's events to a server",
        description=(
            "Publish the events of a JSON lines or MessagePack file to a "
            "`touchstream serve` in batches; rejected events are printed to "
            "standard error as JSON lines with their reasons."
        ),
    )
    add_log_level(publish)
    publish.add_argument("file", type=Path, metavar="FILE")
    publish.add_argument("--format", choices=("jsonl", "msgpack"), default="jsonl")
    publish.add_argument(
        "--batch-events",
        type=_positive,
        default=1_000,
        metavar="N",
        help="events per batch (default 1000; at most the server's max_batch_events)",
    )
    _add_connection(publish)

    subscribe = commands.add_parser(
        "subscribe",
        help="print a server's interventions as JSON lines as they come",
        description=(
            "Subscribe to the interventions of the token's tenant and print "
            "each as a JSON line; the cursor is committed as they are printed "
            "and when the command ends, so the next run resumes after it."
        ),
    )
    add_log_level(subscribe)
    subscribe.add_argument("--subscriber", required=True, metavar="ID")
    subscribe.add_argument("--action", action="append", default=[], metavar="NAME")
    subscribe.add_argument("--segment", action="append", default=[], metavar="NAME")
    subscribe.add_argument("--min-priority", type=int, default=0, metavar="N")
    subscribe.add_argument("--resume-after", default="", metavar="CURSOR")
    subscribe.add_argument("--from-latest", action="store_true")
    subscribe.add_argument(
        "--limit", type=_positive, metavar="N", help="stop after N interventions"
    )
    _add_connection(subscribe)

    engine = commands.add_parser(
        "engine",
        help="run the engine alone: Redis ingest partitions in, Redis out",
        description=(
            "Run the engine without the gRPC server: on the Redis ingest "
            "partitions of the configuration's [redis] section (or, without "
            "one, the ingest log in --data), with checkpoints in --data. With "
            "--until-drained it runs on the replay clock (event time only) and "
            "stops once every partition has been read to its end, so that a "
            "run has an end state; otherwise it follows the partitions on the "
            "live clock until SIGINT or SIGTERM."
        ),
    )
    add_log_level(engine)
    engine.add_argument("--config", type=Path, metavar="FILE", help="TOML settings")
    engine.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=f"checkpoints (and the embedded logs) (default ./{DEFAULT_DATA})",
    )
    engine.add_argument("--until-drained", action="store_true")
    engine.add_argument("--params", type=Path, metavar="FILE")
    engine.add_argument("--horizon", metavar="DURATION")
    engine.add_argument(
        "--metrics-listen",
        metavar="ADDRESS",
        help="serve the engine's Prometheus metrics on http://ADDRESS/metrics",
    )

    token = commands.add_parser(
        "token",
        help="make a token and the tokens-file entry that admits it",
        description=(
            "Print a new random token on the first line, then the [[token]] "
            "entry (with its SHA-256, never the token) to add to the tokens "
            "file."
        ),
    )
    add_log_level(token)
    token.add_argument("--tenant", required=True, type=_name)
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument(
        "--name", required=True, type=_name, help="shown in the audit log"
    )
    return {
        "serve": _serve,
        "publish": _publish,
        "subscribe": _subscribe,
        "token": _token,
        "engine": _engine,
    }


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number of 1 or more - got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _name(text: str) -> str:
    if not 1 <= len(text) <= MAX_NAME_CHARS or not text.strip():
        msg = f"expected 1 to {MAX_NAME_CHARS} characters, not all blank - got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="the server (default: 127.0.0.1:50051, serve's default)",
    )
    parser.add_argument("--token", help="the bearer token (or TOUCHSTREAM_TOKEN)")
    parser.add_argument("--token-file", type=Path, metavar="FILE")
    parser.add_argument("--tls-ca", type=Path, metavar="FILE")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE")
    parser.add_argument("--tls-key", type=Path, metavar="FILE")


def _connection(args: argparse.Namespace) -> Any:
    from stream.clients import Connection, read_token

    return Connection(
        args.address,
        read_token(args.token, args.token_file),
        args.tls_ca,
        args.tls_cert,
        args.tls_key,
    )


def _serve(args: argparse.Namespace) -> int:
    from stream.server import ServeOptions, serve

    config = load_config(args.config)
    # Refused here, with exit code 2, rather than by the engine process.
    params, _ = load_params(args.params)
    value_settings(params, config, args.horizon, args.config)
    data = args.data or (
        Path(config.server.data) if config.server.data else DEFAULT_DATA
    )
    if data.exists() and not data.is_dir():
        msg = f"--data {data} is a file; expected a folder (made if missing)"
        raise UsageError(msg)
    options = ServeOptions(
        config=config,
        data=data,
        listen=args.listen or config.server.listen,
        config_path=args.config,
        params_path=args.params,
        horizon=args.horizon,
        log_level=args.log_level.upper(),
        metrics_listen=args.metrics_listen,
    )
    return serve(options)


def _rpc_failure(ex: grpc.RpcError) -> RunError:
    code = ex.code().name if hasattr(ex, "code") else "UNKNOWN"
    details = ex.details() if hasattr(ex, "details") else str(ex)
    return RunError(f"the server answered {code}: {details}")


def _publish(args: argparse.Namespace) -> int:
    from stream.clients import PublishSummary, publish

    if not args.file.is_file():
        msg = f"input file {args.file} does not exist or is not a file"
        raise UsageError(msg)
    summary = PublishSummary()
    failure = None
    try:
        publish(
            _connection(args),
            args.file,
            args.format,
            args.batch_events,
            sys.stderr,
            summary,
        )
    except grpc.RpcError as ex:
        failure = _rpc_failure(ex)
    # Printed on a failure too: the batches acknowledged are durable, and
    # `last_batch` (FILE:FIRST_LINE) says where to resume.
    print(
        orjson.dumps(
            {
                "batches": summary.batches,
                "accepted": summary.accepted,
                "rejected": summary.rejected,
                "last_batch": summary.last_batch,
            }
        ).decode()
    )
    if failure is not None:
        raise failure
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from stream.clients import SubscribeOptions, subscribe

    options = SubscribeOptions(
        subscriber_id=args.subscriber,
        actions=tuple(args.action),
        min_priority=args.min_priority,
        segments=tuple(args.segment),
        resume_after=args.resume_after,
        from_latest=args.from_latest,
        limit=args.limit,
    )
    try:
        subscribe(_connection(args), options)
    except grpc.RpcError as ex:
        raise _rpc_failure(ex) from None
    return 0


def _token(args: argparse.Namespace) -> int:
    token = new_token()
    print(token)
    print(
        "[[token]]\n"
        f'name = "{args.name}"\n'
        f'sha256 = "{token_digest(token)}"\n'
        f'tenant = "{args.tenant}"\n'
        f'role = "{args.role}"'
    )
    return 0


def _engine(args: argparse.Namespace) -> int:
    from stream.engine import EngineOptions, engine_main

    config = load_config(args.config)
    params, _ = load_params(args.params)
    value_settings(params, config, args.horizon, args.config)
    data = args.data or DEFAULT_DATA
    if data.exists() and not data.is_dir():
        msg = f"--data {data} is a file; expected a folder (made if missing)"
        raise UsageError(msg)
    data.mkdir(parents=True, exist_ok=True)
    engine_main(
        EngineOptions(
            data,
            args.config,
            args.params,
            args.horizon,
            args.log_level.upper(),
            clock="event" if args.until_drained else "live",
            drain=args.until_drained,
            supervised=False,
            metrics_listen=args.metrics_listen,
        )
    )
    return 0
