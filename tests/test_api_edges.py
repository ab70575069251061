"""The API's edges: the generated modules, TLS, the commands, reloading
parameters, and the engine's own refusals."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import msgspec
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from touchstream.v1 import (
    customers_pb2,
    ingest_pb2,
    interventions_pb2,
    interventions_pb2_grpc,
)

from stream.auth import Tokens, TokensFile, token_digest
from stream.config import Config
from stream.params import load_params
from stream.protocol import PACKAGE_DIR, generate, proto_files
from stream.server import ServeOptions, run_in_thread
from stream.store import INGEST_FILE, IngestLog
from tests.api_support import TOKENS, running_api, serve_process, wait_for
from tests.support import ROOT

NOW_MS = int(time.time() * 1000)


def test_the_committed_modules_are_what_the_proto_files_give(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    names = sorted(path.name for path in generated)
    committed = sorted(
        path.name for path in PACKAGE_DIR.glob("*_pb2*.py*") if path.is_file()
    )
    assert names == committed
    assert len(proto_files()) == 4
    for path in generated:
        assert path.read_bytes() == (PACKAGE_DIR / path.name).read_bytes(), (
            f"{path.name} differs from what {path.stem.split('_pb2')[0]}.proto "
            "gives: run ./dev proto"
        )


def _certificate(
    folder: Path,
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    certificate = builder.sign(key if issuer is None else issuer[1], hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
    )
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate, key


def _secure_check(address: str, folder: Path, client: str | None) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.pem").read_bytes(),
        private_key=None if client is None else (folder / f"{client}.key").read_bytes(),
        certificate_chain=(
            None if client is None else (folder / f"{client}.pem").read_bytes()
        ),
    )
    with grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        try:
            interventions_pb2_grpc.InterventionsStub(channel).OutcomeCounts(
                interventions_pb2.OutcomeCountsRequest(),
                metadata=(("authorization", f"Bearer {TOKENS['acme-admin'][0]}"),),
                timeout=10,
            )
        except grpc.RpcError as ex:
            return ex.code()
    return grpc.StatusCode.OK


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    ca = _certificate(tmp_path, "ca", None)
    _certificate(tmp_path, "server", ca)
    _certificate(tmp_path, "client", ca)
    tls = {
        "tls_cert": str(tmp_path / "server.pem"),
        "tls_key": str(tmp_path / "server.key"),
    }
    with running_api(tmp_path / "one", **tls) as api:
        assert _secure_check(api.address, tmp_path, None) == grpc.StatusCode.OK
        with grpc.insecure_channel(api.address) as plain:
            with pytest.raises(grpc.RpcError) as caught:
                interventions_pb2_grpc.InterventionsStub(plain).OutcomeCounts(
                    interventions_pb2.OutcomeCountsRequest(), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    mutual = {**tls, "tls_client_ca": str(tmp_path / "ca.pem")}
    with running_api(tmp_path / "two", **mutual) as api:
        assert _secure_check(api.address, tmp_path, "client") == grpc.StatusCode.OK
        assert _secure_check(api.address, tmp_path, None) == grpc.StatusCode.UNAVAILABLE


def touchstream_command(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_token_prints_a_token_and_the_entry_that_admits_it() -> None:
    done = touchstream_command(
        "token", "--tenant", "acme", "--role", "sales", "--name", "crm"
    )
    assert done.returncode == 0, done.stderr
    token, entry = done.stdout.split("\n", 1)
    parsed = msgspec.convert(tomllib.loads(entry), TokensFile)
    [only] = parsed.token
    assert (only.name, only.tenant, only.role) == ("crm", "acme", "sales")
    assert only.sha256 == token_digest(token) and token not in entry
    identity = Tokens(parsed.token).identify(token)
    assert identity is not None and identity.tenant == "acme"


def test_publish_and_subscribe_commands_against_a_served_engine(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    events = tmp_path / "events.jsonl"
    rows = [
        {
            "event_id": f"e{n}",
            "tenant": "acme",
            "customer_id": f"c{n}",
            "source": "wecom",
            "channel": "wechat",
            "kind": "message",
            "direction": "inbound",
            "ts": now,
        }
        for n in range(3)
    ]
    lines = [orjson.dumps(row) for row in rows] + [b'{"event_id": "broken"']
    events.write_bytes(b"\n".join(lines) + b"\n")
    token = TOKENS["acme-admin"][0]
    with serve_process(tmp_path, heartbeat="100ms") as (api, process):
        published = touchstream_command(
            "publish",
            events,
            "--address",
            api.address,
            "--batch-events",
            "2",
            env={"TOUCHSTREAM_TOKEN": token},
        )
        assert published.returncode == 0, published.stderr
        assert orjson.loads(published.stdout) == {
            "batches": 2,
            "accepted": 3,
            "rejected": 1,
            "last_batch": "events.jsonl:3",
        }
        [rejected] = [
            orjson.loads(line)
            for line in published.stderr.splitlines()
            if line.startswith("{")
        ]
        assert rejected["batch_id"] == "events.jsonl:3" and rejected["index"] == 2

        first = touchstream_command(
            "subscribe",
            "--subscriber",
            "crm",
            "--address",
            api.address,
            "--token",
            token,
            "--limit",
            "4",
        )
        assert first.returncode == 0, first.stderr
        got = [orjson.loads(line) for line in first.stdout.splitlines()]
        assert [item["cursor"] for item in got] == ["1", "2", "3", "4"]
        # The next run resumes after the committed cursor.
        second = touchstream_command(
            "subscribe",
            "--subscriber",
            "crm",
            "--address",
            api.address,
            "--token",
            token,
            "--limit",
            "2",
        )
        assert [
            orjson.loads(line)["cursor"] for line in second.stdout.splitlines()
        ] == ["5", "6"]
        wrong = touchstream_command(
            "subscribe",
            "--subscriber",
            "crm",
            "--address",
            api.address,
            "--token",
            "nope",
            "--limit",
            "1",
        )
        assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_a_first_start_without_tokens_makes_an_admin_token(tmp_path: Path) -> None:
    options = ServeOptions(Config(), tmp_path / "data", "127.0.0.1:0", engine=False)
    server, stop = run_in_thread(options)
    try:
        token_file = tmp_path / "data" / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in (tmp_path / "data" / "tokens.toml").read_text()
        identity = server.tokens.identify(token)
        assert identity is not None
        assert (identity.tenant, identity.role) == ("default", "admin")
    finally:
        stop()


def test_a_changed_parameter_file_is_used_without_a_restart(tmp_path: Path) -> None:
    bundled, _ = load_params(None)
    params_path = tmp_path / "params.json"
    params_path.write_bytes(msgspec.json.encode(bundled))
    day = 86_400_000
    now = int(time.time() * 1000)

    def order(number: int, ts: int, kind: str = "order") -> dict[str, object]:
        row: dict[str, object] = {
            "event_id": f"o{number}",
            "tenant": "acme",
            "customer_id": "c1",
            "source": "erp",
            "channel": "store",
            "kind": kind,
            "direction": "inbound",
            "ts": ts,
        }
        if kind == "order":
            row["amount"] = 50.0
        return row

    def publish(*rows: dict[str, object]) -> None:
        batch = ingest_pb2.EventBatch(
            json_lines=b"\n".join(orjson.dumps(row) for row in rows)
        )
        ack = api.ingest.PublishBatch(batch, metadata=api.md())
        assert ack.accepted == len(rows), ack

    def lineage() -> dict[str, object]:
        explained = api.customers.Explain(
            customers_pb2.GetCustomerRequest(customer_id="c1"), metadata=api.md()
        )
        return dict(json_format.MessageToDict(explained.lineage))

    with serve_process(tmp_path, args=("--params", params_path)) as (api, _):
        publish(order(1, now - 20 * day), order(2, now - 10 * day))
        first = wait_for(lambda: _found(lineage))
        assert first["clv"]["params"]["bgnbd"]["r"] == bundled.bgnbd.r
        changed = msgspec.structs.replace(
            bundled,
            bgnbd=msgspec.structs.replace(bundled.bgnbd, r=bundled.bgnbd.r * 2),
            data_sha256="0" * 64,
        )
        params_path.write_bytes(msgspec.json.encode(changed))
        time.sleep(1.2)  # the file is looked at once a second
        publish(order(3, now - day, kind="message"))
        later = wait_for(
            lambda: (
                (found := _found(lineage))
                and found["clv"]["params"]["data_sha256"] == "0" * 64
                and found
            )
        )
        assert later["clv"]["params"]["bgnbd"]["r"] == changed.bgnbd.r
        assert later["clv"]["clv"] != first["clv"]["clv"]


def _found(read: Callable[[], dict[str, object]]) -> dict[str, Any] | None:
    try:
        return read()  # type: ignore[return-value]
    except grpc.RpcError as ex:
        if ex.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def test_a_conflicting_repeated_id_is_refused_by_the_engine_with_its_reason(
    tmp_path: Path,
) -> None:
    now = int(time.time() * 1000)
    first = {
        "event_id": "same",
        "tenant": "acme",
        "customer_id": "c1",
        "source": "wecom",
        "channel": "wechat",
        "kind": "message",
        "direction": "inbound",
        "ts": now,
    }
    with running_api(tmp_path, engine=True) as api:
        for row in (first, first, {**first, "channel": "email"}):
            ack = api.ingest.PublishBatch(
                ingest_pb2.EventBatch(json_lines=orjson.dumps(row)), metadata=api.md()
            )
            assert ack.accepted == 1  # the ingest cannot know; the engine can

        def refused() -> list[tuple[str, str, int, str, str]]:
            log = IngestLog(api.data / INGEST_FILE)
            rows = log.db.execute(
                "SELECT tenant, batch_id, position, code, reason FROM rejected"
            ).fetchall()
            log.close()
            return [tuple(row) for row in rows]

        [(tenant, batch, offset, code, reason)] = wait_for(refused)
        assert (tenant, batch, offset, code) == ("acme", "engine", 3, "conflict")
        assert "'same'" in reason and "offset 1" in reason


def test_mutual_tls_without_a_server_certificate_is_refused(tmp_path: Path) -> None:
    from stream.errors import UsageError

    (tmp_path / "ca.pem").write_text("")
    with pytest.raises(UsageError, match="tls_client_ca"):
        with running_api(tmp_path, tls_client_ca=str(tmp_path / "ca.pem")):
            pass


@pytest.mark.parametrize(
    "args",
    [
        ("subscribe", "--subscriber", "s", "--limit", "0"),
        ("publish", "x.jsonl", "--batch-events", "0"),
        ("token", "--tenant", "", "--role", "sales", "--name", "n"),
        ("serve", "--listen", "garbage", "--data", "{data}"),
        ("serve", "--listen", "127.0.0.1:99999", "--data", "{data}"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = touchstream_command(
        *(arg.format(data=tmp_path / "data") for arg in args),
        env={"TOUCHSTREAM_TOKEN": "t"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "error:" in done.stderr
