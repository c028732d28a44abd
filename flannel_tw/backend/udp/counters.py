# -*- test-case-name: tests.unit.test_udp_backend -*-
"""
The udp backend's counters: one dict of ints shared by the send path, the receive
path and the frame reassembler, with one counter per drop reason. Pure: no reactor.
"""
from twisted.logger import LogLevel

DROP_REASONS = ("short", "not-ipv4", "bad-header", "unknown-peer", "spoofed-source",
                "foreign-destination", "ttl-expired", "no-route", "send-error",
                "tun-write-error", "incomplete-frame", "bad-offload", "error")


def new_counters() -> dict:
    c = dict.fromkeys((
        "tun_packets_in", "tun_bytes_in",        # read from the tun
        "packets_out", "bytes_out",              # sent to peers over UDP
        "packets_in", "bytes_in",                # datagrams received over UDP
        "tun_packets_out", "tun_bytes_out",      # delivered into the tun (incl. ICMP)
        "icmp_unreachable",                      # ICMP net-unreachable replies written
        "gso_segmented",                         # super-packets cut up for a plain peer
        "frames_out", "frames_in",               # super-packets to / from offload peers
    ), 0)
    for reason in DROP_REASONS:
        c[reason] = 0
    return c


def count_error(counters, log, fmt, **kw):
    """Count an unexpected per-packet error; log the first few, then every 1000th."""
    n = counters["error"] = counters["error"] + 1
    if n <= 10 or n % 1000 == 0:
        log.failure(fmt + " (error #{n})", level=LogLevel.debug, n=n, **kw)
