"""DICOM TLS on the listener (PS3.15 Annex B.1 style): a server certificate, and optionally
client certificates required and verified against a CA bundle.

The context is built once at start-up; anything wrong with the files stops start-up with one
line naming the variable (:class:`SettingsError`), not a traceback on the first connection.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

from oxidicom_py.settings import Settings, SettingsError

log = logging.getLogger("oxidicom_py.net")

CERT = "OXIDICOM_TLS_CERT"
KEY = "OXIDICOM_TLS_KEY"
CLIENT_CA = "OXIDICOM_TLS_CLIENT_CA"


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _encrypted_key() -> bytes:
    # Called by OpenSSL when the private key is encrypted. Without a callback it would prompt
    # on the terminal and hang an unattended start-up.
    raise SettingsError(f"{KEY}: the private key is encrypted with a passphrase; provide an unencrypted key")


class _LoggedSSLObject(ssl.SSLObject):
    """Says why a handshake failed: the event loop closes such connections silently (the
    association protocol never hears of them). The peer address is not known here."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            hint = " (a client not speaking TLS?)" if e.reason in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST"} else ""
            log.warning("TLS handshake failed: %s%s", e.reason or e, hint)
            raise


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when TLS is off (``OXIDICOM_TLS_CERT`` not set)."""
    if settings.tls_cert is None:
        return None
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca

    # The certificate alone first, so that a bad certificate is not blamed on the key.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError) as e:
        raise SettingsError(f"{CERT}: cannot read a PEM certificate from {str(cert)!r}: {_reason(e)}") from None

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslobject_class = _LoggedSSLObject  # what the event loop's TLS layer (wrap_bio) uses
    try:
        ctx.load_cert_chain(cert, key, password=_encrypted_key)
    except SettingsError:
        raise
    except (ssl.SSLError, OSError) as e:
        mismatch = isinstance(e, ssl.SSLError) and e.reason == "KEY_VALUES_MISMATCH"
        if key is None:
            what = "its private key does not match the certificate" if mismatch else "no PEM private key in it"
            raise SettingsError(f"{CERT}: {str(cert)!r}: {what}; add the key to that file or set {KEY}") from None
        if mismatch:
            raise SettingsError(f"{KEY}: {str(key)!r} does not match the certificate in {CERT}") from None
        why = "no PEM private key in it" if isinstance(e, ssl.SSLError) else _reason(e)
        raise SettingsError(f"{KEY}: cannot read a private key from {str(key)!r}: {why}") from None

    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as e:
            raise SettingsError(
                f"{CLIENT_CA}: cannot read PEM CA certificates from {str(client_ca)!r}: {_reason(e)}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe(settings: Settings) -> str:
    """How the listener talks, for the start-up log: ``off``, ``on`` or ``on, client certificates required``."""
    if not settings.tls:
        return "off"
    return "on, client certificates required" if settings.tls_client_ca is not None else "on"


def subject(cert: Mapping[str, Any] | None) -> str:
    """``CN=...,O=...`` from :meth:`ssl.SSLSocket.getpeercert`'s dict ("" without a certificate)."""
    if not cert:
        return ""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C"}
    parts = []
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            parts.append(f"{short.get(name, name)}={value}")
    return ",".join(parts)


def peer_details(transport: Any) -> dict[str, object] | None:
    """TLS version, cipher and client certificate subject of a connection (None: not TLS)."""
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return None
    cipher = obj.cipher()
    return {
        "tls_version": obj.version(),
        "tls_cipher": cipher[0] if cipher else "",
        "peer_certificate": subject(obj.getpeercert()),
    }
