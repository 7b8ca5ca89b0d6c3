"""TLS for every Strata listener and every connection between Strata processes.

A listener serves TLS when started with `--tls-cert FILE --tls-key FILE` (PEM):
gRPC server credentials (`server_credentials`), the walservice's PeerAppend TCP
port and the proxy's HTTPS (`server_ssl_context`). A dialing side trusts the
CA in a PEM file, given as `tls_ca=` (compute_shim `Client`, `WalWriter`,
`connect_sqlite`), as `--tls-ca FILE` (every command and service that dials),
or, for everything one process dials, by the environment variable
`STRATA_TLS_CA` (`client_ca`): `--tls-ca` sets it, so a service's own outgoing
connections (pageserver -> walservice, walservice <-> walservice, proxy ->
pageserver and walservice, and the compute processes the proxy starts) use
TLS too. Without a CA a connection is plaintext.

`make_local_ca` writes what `strata up --tls` uses: a CA and one certificate,
for 127.0.0.1 and localhost, signed by it (keys readable by their owner only).

Every file problem is a clear error naming the file and the flag (`TlsError`),
never a traceback from deep inside gRPC or ssl.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

TLS_CA_ENV = "STRATA_TLS_CA"
CA_FILE, CERT_FILE, KEY_FILE, CA_KEY_FILE = "ca.pem", "server.pem", "server.key", "ca.key"
LOCAL_NAMES = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")


class TlsError(SystemExit):
    """A TLS file that is missing, unreadable or not PEM: exits with the message."""


def _read_pem(path: Path | str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TlsError(f"{flag} {path}: not a PEM file (expected a '-----BEGIN ...' block)")
    return data


@dataclass(frozen=True)
class ServerTls:
    """A listener's certificate chain and private key, read and checked up front."""

    cert_file: Path
    key_file: Path
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, cert_file: Path | str | None, key_file: Path | str | None) -> ServerTls | None:
        """None without either flag; a TlsError when only one is given or a file is bad."""
        if cert_file is None and key_file is None:
            return None
        if cert_file is None or key_file is None:
            raise TlsError("--tls-cert and --tls-key go together: give both (a PEM certificate chain and its private key)")
        tls = cls(Path(cert_file), Path(key_file), _read_pem(cert_file, "--tls-cert"), _read_pem(key_file, "--tls-key"))
        tls.ssl_context()  # a key that does not match its certificate fails here, at start-up
        return tls

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)])

    def ssl_context(self) -> ssl.SSLContext:
        """For asyncio servers (the PeerAppend port, the proxy's HTTPS)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"--tls-cert {self.cert_file} / --tls-key {self.key_file}: {exc}") from exc
        return context


def add_server_arguments(parser) -> None:  # type: ignore[no-untyped-def]
    """--tls-cert / --tls-key, as every listener takes them."""
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve TLS with this PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, default=None, help="... and this PEM private key")


def add_client_argument(parser) -> None:  # type: ignore[no-untyped-def]
    """--tls-ca, as every command and service that dials takes it."""
    parser.add_argument(
        "--tls-ca", type=Path, default=None,
        help=f"dial Strata processes over TLS, trusting this PEM CA (default: ${TLS_CA_ENV} if set, else plaintext)",
    )


def use_client_ca(path: Path | str | None) -> None:
    """Make `path` the CA every connection of this process (and of the processes
    it starts) trusts (`--tls-ca`): checked now, then exported as STRATA_TLS_CA."""
    if path is None:
        return
    _read_pem(path, "--tls-ca")
    os.environ[TLS_CA_ENV] = str(Path(path).resolve())


def client_ca(tls_ca: Path | str | None = None) -> bytes | None:
    """The CA PEM a connection trusts: `tls_ca`, else $STRATA_TLS_CA, else None (plaintext)."""
    path = tls_ca if tls_ca is not None else os.environ.get(TLS_CA_ENV) or None
    if path is None:
        return None
    return _read_pem(path, "--tls-ca" if tls_ca is not None else f"${TLS_CA_ENV}")


def channel_credentials(ca: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca)


def client_ssl_context(ca: bytes) -> ssl.SSLContext:
    """For asyncio connections (a Replicator's PeerAppend TCP connection)."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode())


# -- a local CA for `strata up --tls` ----------------------------------------------------------


@dataclass(frozen=True)
class LocalCa:
    ca: Path
    cert: Path
    key: Path


def make_local_ca(directory: Path, days: int = 3650) -> LocalCa:
    """A CA and a server certificate for 127.0.0.1 / ::1 / localhost under
    `directory` (kept if already there, so a restarted stack keeps trusting it)."""
    paths = LocalCa(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
    if all(p.exists() for p in (paths.ca, paths.cert, paths.key)):
        return paths
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Strata local CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(n) for n in LOCAL_NAMES] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOCAL_IPS]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def private(path: Path, k: ec.EllipticCurvePrivateKey) -> None:
        data = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    private(directory / CA_KEY_FILE, ca_key)
    private(paths.key, key)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))  # written last: its presence means "complete"
    return paths
