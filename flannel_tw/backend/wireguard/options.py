# -*- test-case-name: tests.unit.test_wg_backend -*-
"""
The wireguard backend's options (flanneld v0.20.2, reference section D), read from the
network config's Backend object as Go's encoding/json fills flanneld's struct: keys
match without regard to case (an exact match wins), null keeps the default, unknown
keys are ignored.

  ListenPort                   51820   UDP port of flannel-wg (and the port peers are sent to)
  ListenPortV6                 51821   flannel-wg-v6's port (separate mode, dual-stack)
  PSK                          none    base64 of 32 bytes (``wg genpsk``); "" = none
  PersistentKeepaliveInterval  0       integer seconds, 0 = off
  Mode                         separate  separate | auto | ipv4 | ipv6

The PSK is a secret: it never appears in a repr, a log line or an error message (an
error says what is wrong with it, never what it is). Pure: no reactor.
"""
import base64
import binascii
from dataclasses import dataclass, field
from typing import Optional

from flannel_tw.model.config import go_json_fields

DEFAULT_LISTEN_PORT = 51820
DEFAULT_LISTEN_PORT_V6 = 51821
KEY_LEN = 32
MAX_KEEPALIVE = 65535          # WireGuard's persistent keepalive is a 16-bit field
MODES = ("separate", "auto", "ipv4", "ipv6")
SEPARATE, AUTO, IPV4, IPV6 = MODES
_NAMES = ("ListenPort", "ListenPortV6", "PSK", "PersistentKeepaliveInterval", "Mode")


class OptionsError(ValueError):
    """A Backend option flanneld would refuse (the message names the key, never the PSK)."""


@dataclass(frozen=True)
class WgOptions:
    listen_port: int = DEFAULT_LISTEN_PORT
    listen_port_v6: int = DEFAULT_LISTEN_PORT_V6
    psk: Optional[bytes] = field(default=None, repr=False)    # 32 raw bytes; never shown
    keepalive: int = 0
    mode: str = SEPARATE

    def __repr__(self):
        return ("WgOptions(listen_port=%d, listen_port_v6=%d, psk=%s, keepalive=%d, "
                "mode=%r)" % (self.listen_port, self.listen_port_v6,
                              "<set>" if self.psk else "None", self.keepalive, self.mode))

    __str__ = __repr__


def parse_psk(text) -> bytes:
    """
    A PSK as ``wg genpsk`` prints it (standard base64 of 32 bytes), as wgtypes.ParseKey
    reads it.

    @raise OptionsError: "could not parse psk: ..." saying what is wrong, not the value.
    """
    if not isinstance(text, str):
        raise OptionsError("could not parse psk: Backend.PSK must be a string (base64 of "
                           "32 bytes), got a JSON %s" % (_json_type(text),))
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise OptionsError("could not parse psk: not valid base64 (%d characters; "
                           "expected 44, as printed by wg genpsk)" % (len(text),)) from None
    if len(raw) != KEY_LEN:
        raise OptionsError("could not parse psk: wgtypes: incorrect key size: %d "
                           "(expected 32 bytes)" % (len(raw),))
    return raw


def parse_options(backend) -> WgOptions:
    """
    The wireguard options of a Backend config object (a dict; None or {} = defaults).

    @raise OptionsError: naming the key, for a wrong type or an out-of-range value;
        "No valid Mode configured" for an unknown Mode.
    """
    fields = go_json_fields(list((backend or {}).items()), _NAMES)
    opts = {}
    for key, attr in (("ListenPort", "listen_port"), ("ListenPortV6", "listen_port_v6")):
        if key in fields:
            value = _integer(key, fields[key], "a UDP port")
            if not 1 <= value <= 65535:
                raise OptionsError("Backend.%s must be a UDP port from 1 to 65535, got %d"
                                   % (key, value))
            opts[attr] = value
    if "PersistentKeepaliveInterval" in fields:
        value = _integer("PersistentKeepaliveInterval", fields["PersistentKeepaliveInterval"],
                         "whole seconds (0 = off)")
        if not 0 <= value <= MAX_KEEPALIVE:
            raise OptionsError("Backend.PersistentKeepaliveInterval must be from 0 to %d "
                               "seconds, got %d" % (MAX_KEEPALIVE, value))
        opts["keepalive"] = value
    if "PSK" in fields:
        psk = fields["PSK"]
        if psk != "":
            opts["psk"] = parse_psk(psk)
    if "Mode" in fields:
        mode = fields["Mode"]
        if mode not in MODES:
            shown = mode if isinstance(mode, str) and len(mode) <= 40 else _json_type(mode)
            raise OptionsError("No valid Mode configured (Backend.Mode %r; one of %s)"
                               % (shown, ", ".join(MODES)))
        opts["mode"] = mode
    return WgOptions(**opts)


def _integer(key, value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError("Backend.%s must be an integer (%s), got a JSON %s"
                           % (key, what, _json_type(value)))
    return value


def _json_type(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number %r" % (value,)
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if value is None:
        return "null"
    return "object"
