"""Which certificates the proxy trusts: one ``ssl_context`` for the upstream connector
(session.py), so token, API and relay traffic all verify the same way.

It trusts the OS store through ``truststore`` (the macOS Keychain, the Windows store, the
distribution's bundle: what the official client uses too, so an institution's CA installed
for one works for the other); ``ca_file`` (``DAP_PROXY_CA_FILE``), typically the CA a network
re-signs TLS with; and OpenSSL's ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, loaded explicitly:
the configuration is read from the environment it is given, not the process's. There is no
switch that turns verification off.
"""

from __future__ import annotations

import ssl

import aiohttp
import truststore

from ..config.records import TrustConfig

__all__ = ["CA_FILE_HINT", "ssl_context", "tls_failure"]

CA_FILE_HINT = (
    "if your network re-signs TLS with its own certificate authority, set ca_file "
    "(DAP_PROXY_CA_FILE) to that authority's PEM bundle"
)


def ssl_context(trust: TrustConfig) -> ssl.SSLContext:
    """A client context: the OS store plus the configured bundles; ``ssl.SSLError`` or
    ``OSError`` when a bundle cannot be loaded (load_config reports it)."""
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust.cert_file:
        context.load_verify_locations(cafile=trust.cert_file)
    if trust.cert_dir:
        context.load_verify_locations(capath=trust.cert_dir)
    if trust.ca_file:
        context.load_verify_locations(cafile=trust.ca_file)
    return context


def tls_failure(exc: aiohttp.ClientError) -> str | None:
    """Why a TLS handshake failed, in OpenSSL's words, and what to change; None when ``exc``
    is not a TLS failure."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        why = getattr(error, "verify_message", None) or getattr(error, "reason", None)
        cause = f"certificate verify failed: {why}" if why else "certificate verify failed"
        return f"its TLS certificate could not be verified ({cause}); {CA_FILE_HINT}"
    if isinstance(exc, aiohttp.ClientSSLError):
        reason = getattr(exc.os_error, "reason", None)
        return f"the TLS handshake failed ({reason or 'no reason given'})"
    return None
