"""A test certificate authority made with openssl, and Redis and RabbitMQ servers that speak TLS
with its certificates (private ports and folders; the shared servers are never touched)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import eventually, free_port
from tests.support.ha import RedisNode
from tests.support.servers import PrivateRabbit


@dataclass(frozen=True)
class Pki:
    """Files of a test CA: the CA, a server certificate for 127.0.0.1/localhost and a client
    certificate it signed, and a second CA that signed neither (the wrong one)."""

    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def ca(self) -> Path:
        return self.path("ca.crt")

    @property
    def wrong_ca(self) -> Path:
        return self.path("other-ca.crt")


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_test_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            folder,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-subj",
            f"/CN=atendimento test {ca}",
        )
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for leaf in ("server", "client"):
        _openssl(
            folder,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{leaf}.key",
            "-out",
            f"{leaf}.csr",
            "-subj",
            f"/CN={'localhost' if leaf == 'server' else 'atendimento-client'}",
        )
        _openssl(
            folder,
            "x509",
            "-req",
            "-in",
            f"{leaf}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{leaf}.ext",
            "-out",
            f"{leaf}.crt",
        )
    for key in folder.glob("*.key"):
        key.chmod(0o644)  # the servers run as this user; readable keys are fine in a test folder
    return Pki(folder)


def tls_redis(workdir: Path, pki: Pki) -> RedisNode:
    """redis-server with TLS only (no plain port), client certificates required."""
    server = RedisNode(workdir, [])
    server.arguments = [
        "--port", "0", "--tls-port", str(server.port),
        "--tls-cert-file", str(pki.path("server.crt")), "--tls-key-file", str(pki.path("server.key")),
        "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
    ]  # fmt: skip
    return server


async def redis_serving(server: RedisNode) -> None:
    log = server.workdir / "redis.log"

    async def ready() -> bool:
        return log.exists() and "Ready to accept connections" in log.read_text()

    await eventually(ready, timeout=20, what="the TLS redis-server")


def tls_rabbit(workdir: Path, pki: Pki) -> tuple[PrivateRabbit, int]:
    """A rabbitmq-server with a TLS listener (and its plain one, which its start-up check uses)
    that requires a client certificate signed by the test CA; and the TLS port."""
    port = free_port()
    node = PrivateRabbit(workdir)
    node.extra_config = "\n".join(
        [
            f"listeners.ssl.default = 127.0.0.1:{port}",
            f"ssl_options.cacertfile = {pki.ca}",
            f"ssl_options.certfile = {pki.path('server.crt')}",
            f"ssl_options.keyfile = {pki.path('server.key')}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
            "",
        ]
    )
    return node, port
