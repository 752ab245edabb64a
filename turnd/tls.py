"""TLS for the TLS listeners: server contexts, and the self-signed certificate made when none is
configured.

Theory of operation
-------------------
TURN over TLS (RFC 8656 §3.1) runs STUN and ChannelData over a TLS 1.2+ stream; a client may
offer the ALPN protocol "stun.turn" (RFC 7443), which the server then selects. ``server_context``
builds one ``ssl.SSLContext`` from a certificate and key, after checking the pair itself so that
an operator reads "the key is not the key of this certificate", not OpenSSL's "PEM lib".

With neither ``tls.cert_file`` nor ``tls.key_file`` configured, ``ensure_self_signed`` keeps a
certificate in ``<state_dir>/tls/`` (made on first start, reused while it is good) and
``context_from_config`` returns a warning saying that clients will not trust it.

The daemon calls ``context_from_config`` at start and on SIGHUP: each call reads the files again
and returns a new context, used for new connections; connections already open keep the context
they were made with. Error messages name files and reasons, never key material.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from turnd.state import StateFileError, write_atomic

if TYPE_CHECKING:
    from turnd.config import Config

ALPN_PROTOCOLS = ("stun.turn",)  # RFC 7443 §4: the ALPN label of TURN (and STUN) over TLS.
MIN_VERSIONS = {  # tls.min_version: nothing older than TLS 1.2 (RFC 8996).
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
SELF_SIGNED_DIR = "tls"  # Under the state directory.
SELF_SIGNED_CERT = "cert.pem"
SELF_SIGNED_KEY = "key.pem"
SELF_SIGNED_COMMON_NAME = "turnd self-signed"  # Says what it is to whoever inspects it.
SELF_SIGNED_VALIDITY = datetime.timedelta(days=365)  # A year: the longest clients are used to.
# Replaced this long before it expires, so that a restart or SIGHUP renews it before it lapses.
SELF_SIGNED_RENEW_BEFORE = datetime.timedelta(days=30)
# Valid from a little before now, for clients whose clock runs a little behind ours.
SELF_SIGNED_BACKDATE = datetime.timedelta(minutes=5)
LOOPBACK_IPS = ("127.0.0.1", "::1")  # Always named by the self-signed certificate (local tests).


class TlsError(RuntimeError):
    """The TLS certificate or key cannot be used; the message says which file and why."""


def ensure_self_signed(
    state_dir: str | Path, hostnames: Sequence[str], ips: Sequence[str]
) -> tuple[Path, Path, bool]:
    """``<state_dir>/tls/cert.pem`` and ``key.pem``, and whether they were created now.

    The pair is reused when it reads back, its key matches, it names every one of ``hostnames``
    and ``ips`` and it is valid for ``SELF_SIGNED_RENEW_BEFORE`` more; otherwise a new one is
    made: an EC P-256 key, a SHA-256 signature, valid a year. Files are 0600 in a 0700 directory.
    Raises ``TlsError`` when the directory cannot be written; ValueError when given no name.
    """
    if not hostnames and not ips:
        raise ValueError("a certificate needs at least one hostname or IP address")
    directory = Path(state_dir) / SELF_SIGNED_DIR
    cert_path, key_path = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    now = datetime.datetime.now(datetime.UTC)
    if _reusable(cert_path, key_path, hostnames, ips, now):
        return cert_path, key_path, False
    cert_pem, key_pem = _self_signed(hostnames, ips, now)
    try:
        Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)
        write_atomic(key_path, key_pem)
        write_atomic(cert_path, cert_pem)
    except (OSError, StateFileError) as exc:
        why = exc.problem if isinstance(exc, StateFileError) else exc.strerror
        raise TlsError(
            f"cannot write a self-signed certificate into {directory}: {why} (make "
            "server.state_dir writable, or set tls.cert_file and tls.key_file)"
        ) from None
    return cert_path, key_path, True


def server_context(
    cert_file: str | Path, key_file: str | Path, min_version: str = "1.2"
) -> ssl.SSLContext:
    """A server context for the TLS listeners: ``cert_file`` (PEM chain, leaf first) and its
    unencrypted PEM ``key_file``; TLS ``min_version`` ("1.2" or "1.3") or newer; ALPN
    "stun.turn"; no compression; Python's default (secure) cipher suites.

    Raises ``TlsError`` naming the file when one is missing, unreadable, not PEM, encrypted, or
    when the key is not the certificate's.
    """
    if min_version not in MIN_VERSIONS:
        raise TlsError(f'unsupported TLS minimum version {min_version!r}: use "1.2" or "1.3"')
    cert_path, key_path = Path(cert_file), Path(key_file)
    _check_pair(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        # A password, even empty, keeps OpenSSL from prompting on a terminal for one.
        context.load_cert_chain(cert_path, key_path, password=b"")
    except OSError as exc:  # ssl.SSLError included: OpenSSL refuses what cryptography took.
        reason = str(getattr(exc, "reason", None) or exc.strerror).replace("_", " ").lower()
        raise TlsError(f"cannot use {cert_path} with {key_path}: {reason}") from None
    return context


def certificate_files(config: Config) -> tuple[Path, Path, list[str]]:
    """The certificate and key the TLS listeners use, and warnings for the log.

    ``tls.cert_file`` and ``tls.key_file`` when configured; with neither, the self-signed pair
    of ``ensure_self_signed`` in ``server.state_dir``, naming localhost, this host's name, the
    concrete service addresses and loopback, with a warning that clients will not trust it.
    """
    cert_file, key_file = config.tls.cert_file, config.tls.key_file
    if cert_file is not None and key_file is not None:
        return Path(cert_file), Path(key_file), []
    if cert_file is not None or key_file is not None:
        raise TlsError("set both tls.cert_file and tls.key_file, or neither")
    own_names = dict.fromkeys(("localhost", socket.gethostname()))
    hostnames = [name for name in own_names if name and name.isascii()]  # DNS names are ASCII.
    concrete = [str(ip) for ip in config.listen_addresses() if not ip.is_unspecified]
    ips = list(dict.fromkeys((*concrete, *LOOPBACK_IPS)))
    cert, key, created = ensure_self_signed(config.server.state_dir, hostnames, ips)
    made = "generated now" if created else "kept from an earlier start"
    note = (
        f"no tls.cert_file and tls.key_file configured: TLS listeners use a self-signed "
        f"certificate ({made}): {cert}, key {key}. Browsers and most TURN clients will not trust "
        "it; set tls.cert_file and tls.key_file to a certificate from a CA."
    )
    return cert, key, [note]


def context_from_config(config: Config) -> tuple[ssl.SSLContext, list[str]]:
    """A new server context from ``config.tls`` (or a self-signed certificate), and warnings.

    Called at start and on SIGHUP; raises ``TlsError``.
    """
    cert, key, notes = certificate_files(config)
    return server_context(cert, key, config.tls.min_version), notes


def check_configured(config: Config) -> None:
    """Load the configured certificate and key exactly as start-up does; ``TlsError`` if they
    cannot serve. Nothing to check without a TLS listener, or with no files configured (start-up
    then makes a self-signed pair, and check-config writes nothing)."""
    from turnd.config import Transport

    if not any(item.transport is Transport.TLS for item in config.server.listen):
        return
    if config.tls.cert_file is None and config.tls.key_file is None:
        return
    cert, key, _ = certificate_files(config)
    server_context(cert, key, config.tls.min_version)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} file {path}: {exc.strerror}") from None


def _spki(public: CertificatePublicKeyTypes | PublicKeyTypes) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, to compare two of them."""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    """The first certificate of ``cert_path``, once checked to be that of the unencrypted PEM
    private key in ``key_path``; else ``TlsError``."""
    try:
        leaf = x509.load_pem_x509_certificates(_read(cert_path, "certificate"))[0]
    except ValueError:
        raise TlsError(
            f"{cert_path} is not a PEM certificate chain "
            "(-----BEGIN CERTIFICATE----- blocks, the server's own first)"
        ) from None
    try:
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except TypeError:
        raise TlsError(
            f"{key_path}: the private key is encrypted; turnd needs it unencrypted, in a file "
            "only turnd can read"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"{key_path} is not a PEM private key") from None
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise TlsError(
            f"{key_path} is not the private key of {cert_path} (the first certificate there must "
            "be the server's own)"
        )
    return leaf


def _reusable(
    cert_path: Path,
    key_path: Path,
    hostnames: Sequence[str],
    ips: Sequence[str],
    now: datetime.datetime,
) -> bool:
    """Whether the self-signed pair on disk can serve on: see ``ensure_self_signed``."""
    try:
        cert = _check_pair(cert_path, key_path)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (TlsError, x509.ExtensionNotFound):
        return False
    wanted_ips = {ipaddress.ip_address(ip) for ip in ips}
    return (
        cert.not_valid_after_utc > now + SELF_SIGNED_RENEW_BEFORE
        and set(hostnames) <= set(names.get_values_for_type(x509.DNSName))
        and wanted_ips <= set(names.get_values_for_type(x509.IPAddress))
    )


def _self_signed(
    hostnames: Sequence[str], ips: Sequence[str], now: datetime.datetime
) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_COMMON_NAME)])
    alternative_names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    usage = x509.KeyUsage(
        digital_signature=True,  # ECDHE-ECDSA: the key only signs the handshake.
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SELF_SIGNED_BACKDATE)
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
