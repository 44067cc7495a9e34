"""Credentials for private hosts: a TLS CA and certificates (openssl), ssh keys (ssh-keygen).

Everything is generated at test time into directories the caller owns; nothing is read
from or written to the machine's own ``/etc/pki``, ``/etc/ssh`` or ``~/.ssh``.

libvirt's TLS layout (see libvirt's "TLS x509 certificates" docs):

- a client's ``pkipath`` directory holds ``cacert.pem``, ``clientcert.pem`` and
  ``clientkey.pem``;
- the server (``libvirtd.conf``'s ``ca_file``, ``cert_file``, ``key_file``) uses the same
  CA and its own ``servercert.pem`` / ``serverkey.pem``, whose subjectAltName holds the
  address and name clients use in their URIs (libvirt checks it against the URI's host).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Certificates are for tests: short-lived but long enough for any run.
_DAYS = "30"


class CredentialError(RuntimeError):
    """openssl or ssh-keygen failed."""


def _run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env={"PATH": _PATH}, cwd=cwd, check=False)
    if result.returncode != 0:
        raise CredentialError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA: ``cert`` (PEM) and its private ``key``."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, folder: Path, name: str) -> CertificateAuthority:
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / "cacert.pem", folder / "cakey.pem"
        _run(
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256",
            "-keyout", str(key), "-out", str(cert), "-days", _DAYS, "-subj", f"/O=virtplan lab/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        key.chmod(0o600)
        return cls(cert, key)

    def issue(self, key: Path, cert: Path, name: str, *, server: bool, addresses: tuple[str, ...] = ()) -> None:
        """Write a new key and a certificate for ``name`` signed by this CA.

        A server certificate names ``name`` and ``addresses`` in its subjectAltName.
        """
        key.parent.mkdir(parents=True, exist_ok=True)
        cert.parent.mkdir(parents=True, exist_ok=True)
        request = cert.with_suffix(".csr")
        extensions = cert.with_suffix(".ext")
        _run(
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256",
            "-keyout", str(key), "-out", str(request), "-subj", f"/O=virtplan lab/CN={name}",
        )  # fmt: skip
        key.chmod(0o600)
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
        ]
        if server:
            lines.append("subjectAltName=" + ",".join([f"DNS:{name}", *(f"IP:{a}" for a in addresses)]))
        extensions.write_text("\n".join(lines) + "\n")
        _run(
            "openssl", "x509", "-req", "-sha256", "-in", str(request), "-CA", str(self.cert),
            "-CAkey", str(self.key), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", _DAYS,
            "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        request.unlink()
        extensions.unlink()

    def client_pkipath(self, folder: Path, name: str) -> Path:
        """A libvirt client ``pkipath`` folder: this CA plus a new client certificate."""
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.cert, folder / "cacert.pem")
        self.issue(folder / "clientkey.pem", folder / "clientcert.pem", name, server=False)
        return folder


def ssh_keypair(private: Path, comment: str) -> str:
    """Generate an ed25519 key pair at ``private`` (+ ``.pub``); the public key line."""
    private.parent.mkdir(parents=True, exist_ok=True)
    for path in (private, private.with_name(private.name + ".pub")):
        path.unlink(missing_ok=True)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private))
    return private.with_name(private.name + ".pub").read_text().strip()
