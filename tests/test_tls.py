"""turnd.tls: the self-signed certificate, server contexts (real handshakes in memory), errors."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from turnd import state
from turnd.config import Config, TlsConfig, parse_config
from turnd.tls import (
    TlsError,
    certificate_files,
    context_from_config,
    ensure_self_signed,
    server_context,
)

NOW = datetime.datetime.now(datetime.UTC)
HOSTNAMES = ["localhost", "turn.example.org"]
IPS = ["127.0.0.1", "2001:db8::1"]


def write_pair(
    directory: Path,
    *,
    not_after: datetime.datetime | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
) -> tuple[Path, Path]:
    """A self-signed cert.pem and key.pem in ``directory``: expiry, key and names as given (no
    subjectAltName when there are no names)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    not_after = not_after or NOW + datetime.timedelta(days=90)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=365))
        .not_valid_after(not_after)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


class Refused(Exception):
    """The handshake failed on one side: ``side`` is "client" or "server"."""

    def __init__(self, side: str, error: ssl.SSLError) -> None:
        super().__init__(side, error)
        self.side, self.error = side, error


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A real TLS handshake between two contexts over memory BIOs: (client, server) objects."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    sides = {
        "client": client.wrap_bio(to_client, to_server, server_hostname=hostname),
        "server": server.wrap_bio(to_server, to_client, server_side=True),
    }
    done: set[str] = set()
    for _ in range(10):
        for side, tls_object in sides.items():
            if side in done:
                continue
            try:
                tls_object.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise Refused(side, exc) from exc
        if len(done) == 2:
            return sides["client"], sides["server"]
    raise AssertionError("the handshake stalled")


def client_trusting(cert: Path, alpn: tuple[str, ...] = ("stun.turn",)) -> ssl.SSLContext:
    """A client context that verifies the server's name against ``cert``, its one trust anchor."""
    context = ssl.create_default_context(cafile=str(cert))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


# The self-signed certificate --------------------------------------------------------------


def test_self_signed_pair_is_created_private_and_names_the_hosts(tmp_path: Path) -> None:
    """Missing: an EC P-256 / SHA-256 certificate, a year, CN and SAN as asked; 0600 in 0700."""
    cert_path, key_path, created = ensure_self_signed(tmp_path / "state", HOSTNAMES, IPS)
    assert created
    assert (cert_path, key_path) == (
        tmp_path / "state/tls/cert.pem",
        tmp_path / "state/tls/key.pem",
    )
    assert stat.S_IMODE(os.stat(tmp_path / "state/tls").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cert_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert sorted(path.name for path in cert_path.parent.iterdir()) == ["cert.pem", "key.pem"]
    cert = load_cert(cert_path)
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "turnd self-signed" and cert.issuer == cert.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == HOSTNAMES
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip) for ip in IPS]
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC)
    server_context(cert_path, key_path)  # The key is the certificate's.


def test_self_signed_pair_is_reused_while_good(tmp_path: Path) -> None:
    """A second call keeps the files as they are: a restart does not change the certificate."""
    cert_path, key_path, _ = ensure_self_signed(tmp_path, HOSTNAMES, IPS)
    before = cert_path.read_bytes(), key_path.read_bytes()
    assert ensure_self_signed(tmp_path, HOSTNAMES[:1], IPS[:1]) == (cert_path, key_path, False)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


SPOILED: dict[str, dict[str, Any]] = {
    "expired": dict(not_after=NOW - datetime.timedelta(days=1)),
    "expiring within 30 days": dict(not_after=NOW + datetime.timedelta(days=29)),
    "a name missing": dict(dns=("other.example",)),
    "an IP missing": dict(ips=("::1",)),
    "no subjectAltName": dict(dns=(), ips=()),
    "garbage certificate": {},
    "garbage key": {},
    "key of another certificate": {},
    "missing key": {},
}


@pytest.mark.parametrize("spoil", SPOILED)
def test_self_signed_pair_is_replaced_when_it_cannot_serve(tmp_path: Path, spoil: str) -> None:
    """Expired (or about to be), unreadable, mismatched or naming too little: made anew."""
    cert_path, key_path = write_pair(tmp_path / "tls")
    assert not ensure_self_signed(tmp_path, ["localhost"], ["127.0.0.1"])[2]  # Good: kept.
    write_pair(tmp_path / "tls", **SPOILED[spoil])
    if spoil == "garbage certificate":
        cert_path.write_text("not a certificate\n")
    elif spoil == "garbage key":
        key_path.write_text("not a key\n")
    elif spoil == "key of another certificate":
        write_pair(tmp_path / "other")[1].replace(key_path)
    elif spoil == "missing key":
        key_path.unlink()
    assert ensure_self_signed(tmp_path, ["localhost"], ["127.0.0.1"]) == (
        cert_path,
        key_path,
        True,
    )
    assert load_cert(cert_path).not_valid_after_utc > NOW + datetime.timedelta(days=364)
    server_context(cert_path, key_path)


def test_self_signed_pair_that_cannot_be_written_is_a_tls_error(tmp_path: Path) -> None:
    """A state_dir that is not a writable directory gives an error saying what to do."""
    state = tmp_path / "state"
    state.write_text("a file, not a directory")
    with pytest.raises(TlsError, match=r"cannot write a self-signed certificate into .*state/tls"):
        ensure_self_signed(state, ["localhost"], [])


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are replaced whole; a write that fails midway leaves nothing behind."""

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state.os, "replace", fail)  # tls writes with state.write_atomic
    with pytest.raises(TlsError, match=r"(?i)no space left on"):
        ensure_self_signed(tmp_path, ["localhost"], [])
    assert list((tmp_path / "tls").iterdir()) == []


def test_self_signed_pair_needs_a_name(tmp_path: Path) -> None:
    """A certificate naming nothing could serve no one: ValueError."""
    with pytest.raises(ValueError, match="at least one hostname or IP"):
        ensure_self_signed(tmp_path, [], [])


# Server contexts ------------------------------------------------------------------------------


def test_handshake_selects_stun_turn_alpn(tmp_path: Path) -> None:
    """A verifying client offering ALPN "stun.turn" (RFC 7443) gets it, over TLS 1.3."""
    cert, key, _ = ensure_self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    client, server = handshake(server_context(cert, key), client_trusting(cert))
    assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "stun.turn"
    assert client.version() == "TLSv1.3"
    assert server.compression() is None


def test_handshake_without_alpn_still_succeeds(tmp_path: Path) -> None:
    """Clients that offer no ALPN (coturn's tools) are served all the same."""
    cert, key, _ = ensure_self_signed(tmp_path, ["localhost"], [])
    client, server = handshake(server_context(cert, key), client_trusting(cert, alpn=()))
    assert server.selected_alpn_protocol() is None
    assert client.getpeercert() is not None


def test_tls_1_2_is_accepted_by_default_and_refused_at_min_version_1_3(tmp_path: Path) -> None:
    """min_version "1.2" serves a TLS 1.2 client; "1.3" refuses it."""
    cert, key, _ = ensure_self_signed(tmp_path, ["localhost"], [])
    client = client_trusting(cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12, _ = handshake(server_context(cert, key, "1.2"), client)
    assert tls12.version() == "TLSv1.2"
    assert tls12.selected_alpn_protocol() == "stun.turn"
    with pytest.raises(Refused) as refused:
        handshake(server_context(cert, key, "1.3"), client)
    assert (refused.value.side, refused.value.error.reason) == ("server", "UNSUPPORTED_PROTOCOL")


def test_tls_1_1_is_refused(tmp_path: Path) -> None:
    """A client that offers only TLS 1.1 (RFC 8996 deprecates it) is refused by the server."""
    cert, key, _ = ensure_self_signed(tmp_path, ["localhost"], [])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # Let this client really offer TLS 1.1.
    with pytest.raises(Refused) as refused:
        handshake(server_context(cert, key), client)
    assert (refused.value.side, refused.value.error.reason) == ("server", "UNSUPPORTED_PROTOCOL")


def test_mismatched_key_is_a_tls_error_without_key_material(tmp_path: Path) -> None:
    """A key that is not the certificate's is named with the certificate, and never shown."""
    cert, _ = write_pair(tmp_path / "a")
    _, key = write_pair(tmp_path / "b")
    with pytest.raises(TlsError) as caught:
        server_context(cert, key)
    message = str(caught.value)
    assert f"{key} is not the private key of {cert}" in message
    assert "PRIVATE KEY" not in message and key.read_text().splitlines()[1] not in message


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_missing_file_is_a_tls_error_naming_it(tmp_path: Path, missing: str) -> None:
    """A file that cannot be read is named, with the reason."""
    cert, key = write_pair(tmp_path)
    absent = {"cert": cert, "key": key}[missing]
    absent.unlink()
    what = {"cert": "certificate", "key": "key"}[missing]
    with pytest.raises(
        TlsError, match=re.escape(f"cannot read the TLS {what} file {absent}: No such file")
    ):
        server_context(cert, key)


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        ("cert", "is not a PEM certificate chain"),
        ("key", "is not a PEM private key"),
        ("encrypted", "the private key is encrypted; turnd needs it unencrypted"),
    ],
)
def test_unusable_file_is_a_tls_error_saying_why(tmp_path: Path, spoil: str, problem: str) -> None:
    """Not PEM, or an encrypted key (which would make OpenSSL prompt): a TlsError, no prompt."""
    cert, key = write_pair(tmp_path)
    if spoil == "cert":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    elif spoil == "key":
        key.write_text("nonsense\n")
    else:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        encryption = serialization.BestAvailableEncryption(b"passphrase")
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )
    with pytest.raises(TlsError, match=problem):
        server_context(cert, key)


def test_key_openssl_refuses_is_a_tls_error(tmp_path: Path) -> None:
    """A pair that parses but that OpenSSL will not serve (a 1024-bit RSA key) says why."""
    cert, key = write_pair(tmp_path, key=rsa.generate_private_key(65537, 1024))
    with pytest.raises(
        TlsError, match=re.escape(f"cannot use {cert} with {key}: ee key too small")
    ):
        server_context(cert, key)


def test_unknown_min_version_is_a_tls_error(tmp_path: Path) -> None:
    """Only "1.2" and "1.3" are minimum versions."""
    cert, key = write_pair(tmp_path)
    with pytest.raises(TlsError, match=r"unsupported TLS minimum version '1\.1'"):
        server_context(cert, key, "1.1")


# From the configuration -----------------------------------------------------------------------


def test_no_files_configured_uses_a_self_signed_certificate_with_a_warning(
    tmp_path: Path,
) -> None:
    """With neither file: the state_dir pair, naming loopback and service addresses; a warning."""
    config = parse_config(
        f'[server]\nstate_dir = "{tmp_path}"\naddresses = ["0.0.0.0", "192.0.2.1"]', {}
    )
    context, notes = context_from_config(config)
    cert = tmp_path / "tls/cert.pem"
    assert len(notes) == 1
    assert str(cert) in notes[0] and str(tmp_path / "tls/key.pem") in notes[0]
    assert "generated now" in notes[0] and "will not trust" in notes[0]
    names = load_cert(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert ips == {"192.0.2.1", "127.0.0.1", "::1"}
    client, _ = handshake(context, client_trusting(cert))
    assert client.selected_alpn_protocol() == "stun.turn"
    _, again = context_from_config(config)
    assert "kept from an earlier start" in again[0]


def test_configured_files_are_used_and_reread_for_each_new_context(tmp_path: Path) -> None:
    """Configured files, no warning; each call (start, SIGHUP) reads them anew into a new
    context, while the old context keeps serving what it loaded."""
    cert, key = write_pair(tmp_path / "etc")
    text = f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nmin_version = "1.3"\n'
    config = parse_config(f'[server]\nstate_dir = "{tmp_path / "state"}"\n' + text, {})
    assert certificate_files(config) == (cert, key, [])
    first, notes = context_from_config(config)
    assert notes == []
    assert first.minimum_version is ssl.TLSVersion.TLSv1_3
    old_der = load_cert(cert).public_bytes(serialization.Encoding.DER)
    old_client = client_trusting(cert)
    assert handshake(first, old_client)[0].getpeercert(binary_form=True) == old_der
    write_pair(tmp_path / "etc")  # The operator renews the certificate, then sends SIGHUP.
    second, _ = context_from_config(config)
    new_der = handshake(second, client_trusting(cert))[0].getpeercert(binary_form=True)
    assert new_der == load_cert(cert).public_bytes(serialization.Encoding.DER) != old_der
    assert handshake(first, old_client)[0].getpeercert(binary_form=True) == old_der
    assert not (tmp_path / "state").exists()


def test_one_file_without_the_other_is_a_tls_error() -> None:
    """A hand-built config with only one of the two files is refused."""
    config = Config(tls=TlsConfig(cert_file="/etc/turnd/cert.pem"))
    with pytest.raises(TlsError, match=r"set both tls\.cert_file and tls\.key_file, or neither"):
        context_from_config(config)
