# -*- test-case-name: tests.integration.test_daemon -*-
"""systemd's sd_notify protocol: one datagram to $NOTIFY_SOCKET."""
import os
import socket


def sd_notify(state, environ=None):
    """
    Send C{state} (e.g. "READY=1") to the socket named by $NOTIFY_SOCKET.

    @return: True if sent, False when not running under systemd. Socket errors
        are returned as False too: readiness notification must never kill the daemon.
    """
    environ = os.environ if environ is None else environ
    addr = environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def sd_status(text, environ=None):
    """Send C{STATUS=text} (what C{systemctl status} shows), on one line."""
    return sd_notify("STATUS=" + " ".join(str(text).splitlines()), environ)
