"""SIGHUP picks up a new TLS certificate without dropping connections or allocations."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
from pathlib import Path

from stun import attributes as at
from stun.keys import long_term_key
from stun.message import MessageClass, Method, decode
from testkit.daemon import PASSWORD, REALM, USER, Daemon, start_turnd, wait_for_event
from testkit.sync import read_stun_frame
from tests.service.test_stream_limits import _request
from turnd.tls import ensure_self_signed


def _fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key, _ = ensure_self_signed(directory / name, [name], ["127.0.0.1"])
    return cert, key


def _daemon_on_first_certificate(tmp_path: Path) -> tuple[Daemon, Path, Path]:
    """turnd serving TLS with certificate "first" from files that a test may overwrite."""
    first_cert, first_key = _make_pair(tmp_path, "first")
    live_cert, live_key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    shutil.copy(first_cert, live_cert)
    shutil.copy(first_key, live_key)
    daemon = start_turnd(
        tmp_path,
        f'[tls]\ncert_file = "{live_cert}"\nkey_file = "{live_key}"\n',
        listen='["udp:0", "tls:0"]',
    )
    return daemon, live_cert, live_key


def test_sighup_loads_a_new_certificate_and_keeps_live_tls_allocations(tmp_path: Path) -> None:
    """New handshakes get the new certificate; an allocation on an old connection lives on."""
    second_cert, second_key = _make_pair(tmp_path, "second")
    daemon, live_cert, live_key = _daemon_on_first_certificate(tmp_path)
    try:
        port = daemon.ports["tls"][0]
        before = _fingerprint(port)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as tls:
            key = long_term_key(USER, REALM, PASSWORD)
            tls.sendall(_request(Method.ALLOCATE, [at.RequestedTransport(17)]))
            nonce = decode(read_stun_frame(tls)).get(at.Nonce)
            assert nonce is not None
            creds = [at.Username(USER), at.Realm(REALM), at.Nonce(nonce.value)]
            tls.sendall(_request(Method.ALLOCATE, [at.RequestedTransport(17), *creds], key))
            assert decode(read_stun_frame(tls)).cls is MessageClass.SUCCESS

            shutil.copy(second_cert, live_cert)
            shutil.copy(second_key, live_key)
            daemon.process.send_signal(signal.SIGHUP)
            wait_for_event(daemon, "reload.done")

            after = _fingerprint(port)
            assert after != before
            assert (
                after
                == hashlib.sha256(ssl.PEM_cert_to_DER_cert(second_cert.read_text())).hexdigest()
            )
            tls.sendall(_request(Method.REFRESH, creds, key))
            assert decode(read_stun_frame(tls)).cls is MessageClass.SUCCESS
    finally:
        assert daemon.stop() == 0


def test_sighup_with_a_mismatched_key_keeps_the_old_certificate(tmp_path: Path) -> None:
    """A certificate and key that do not belong together are refused; TLS keeps working."""
    _, second_key = _make_pair(tmp_path, "second")
    daemon, _, live_key = _daemon_on_first_certificate(tmp_path)
    try:
        port = daemon.ports["tls"][0]
        before = _fingerprint(port)
        shutil.copy(second_key, live_key)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_event(daemon, "reload.refused")
        assert _fingerprint(port) == before
    finally:
        assert daemon.stop() == 0
