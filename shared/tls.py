"""TLS towards Redis (`rediss://`) and RabbitMQ (`amqps://`): the client's SSL context from the
CA bundle and client certificate the settings name, and the start-up check that turns a server
whose certificate that CA does not sign into one clear configuration error.

An unreachable server is no configuration error (the services start and say so in their health);
a certificate that does not verify is: retrying would never help.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from shared.settings import ConfigError, TlsFiles

# How long the start-up check waits for a server; one that does not answer is left to the
# connection's own retries (it may be starting too).
CHECK_TIMEOUT_S = 3.0


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Verifying context: the CA bundle when set (else the system's), the client certificate when set."""
    try:
        context = ssl.create_default_context(cafile=str(files.ca_file) if files.ca_file else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{files.prefix}_CA_FILE={files.ca_file}: not a PEM CA bundle ({exc})") from None
    if files.cert_file is not None and files.key_file is not None:
        try:
            context.load_cert_chain(str(files.cert_file), str(files.key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{files.prefix}_CERT_FILE/{files.prefix}_KEY_FILE: not a certificate and its key ({exc})"
            ) from None
    return context


async def check_server_certificate(host: str, port: int, context: ssl.SSLContext, files: TlsFiles) -> None:
    """Raise ConfigError naming the CA setting when the server's certificate does not verify."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), CHECK_TIMEOUT_S
        )
    except ssl.SSLCertVerificationError as exc:
        setting = f"{files.prefix}_CA_FILE" + (f"={files.ca_file}" if files.ca_file else " (unset: system CAs)")
        raise ConfigError(
            f"{setting}: the certificate of {host}:{port} does not verify ({exc.verify_message})"
        ) from None
    except (OSError, TimeoutError):
        return  # unreachable or refusing for another reason: the connection's retries deal with it
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CHECK_TIMEOUT_S)
