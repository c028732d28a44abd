# -*- test-case-name: tests.unit.test_etcd_client, tests.integration.test_etcd_client -*-
"""
etcd v2's answers, pure: L{Node} and L{Response}, and L{parse_response}, which turns
one HTTP answer (status, headers, body) into a Response or the typed error it means
(L{flannel_tw.etcd.errors}). Also endpoint URL validation and etcd's /health answer.
"""
import json
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlsplit

from flannel_tw.etcd.errors import (SERVER_CODES, EtcdMemberError, EtcdProtocolError,
                                    error_from_body)

__all__ = ["Node", "Response", "parse_response", "header_index", "says_unhealthy",
           "validate_endpoint", "SNIPPET"]

SNIPPET = 200   # bytes of a bad body kept in errors and logs


@dataclass(frozen=True)
class Node:
    """One etcd v2 node.  ``nodes`` holds the children (a tuple of L{Node}) of a directory."""

    key: str
    value: Optional[str] = None
    dir: bool = False
    ttl: Optional[int] = None
    expiration: Optional[str] = None
    modified_index: int = 0
    created_index: int = 0
    nodes: Tuple["Node", ...] = ()

    @classmethod
    def from_json(cls, obj) -> "Node":
        """Build a Node from etcd's JSON object; raises ValueError/TypeError on bad shapes
        (OverflowError for an infinite number, RecursionError for absurd nesting)."""
        if not isinstance(obj, dict):
            raise TypeError("node is not an object: %r" % (obj,))
        children = obj.get("nodes") or ()
        if not isinstance(children, (list, tuple)):
            raise TypeError("nodes is not a list")
        ttl = obj.get("ttl")
        value = obj.get("value")
        return cls(
            key=str(obj.get("key", "/")),  # etcd omits the key of the root directory
            value=None if value is None else str(value),
            dir=bool(obj.get("dir", False)),
            ttl=None if ttl is None else int(ttl),
            expiration=obj.get("expiration"),
            modified_index=int(obj.get("modifiedIndex", 0) or 0),
            created_index=int(obj.get("createdIndex", 0) or 0),
            nodes=tuple(cls.from_json(child) for child in children),
        )


@dataclass(frozen=True)
class Response:
    """A successful etcd v2 answer.  ``etcd_index`` is the X-Etcd-Index header (None if absent)."""

    action: str
    node: Node
    prev_node: Optional[Node]
    etcd_index: Optional[int]


def validate_endpoint(endpoint) -> str:
    if not isinstance(endpoint, str):
        raise ValueError("bad etcd endpoint %r: not a string" % (endpoint,))
    try:
        parts = urlsplit(endpoint.strip())
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise ValueError("bad etcd endpoint %r: %s" % (endpoint, e)) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("bad etcd endpoint %r: need http:// or https:// and a host" % (endpoint,))
    if parts.query or parts.fragment:
        raise ValueError("bad etcd endpoint %r: no query or fragment allowed" % (endpoint,))
    return endpoint.strip().rstrip("/")


def says_unhealthy(body) -> bool:
    """True for etcd's C{/health} answer C{{"health": "false", ...}}."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("health") in (False, "false")


def header_index(headers) -> Optional[int]:
    raw = headers.getRawHeaders(b"x-etcd-index") if headers is not None else None
    if not raw:
        return None
    try:
        return int(raw[0])
    except (TypeError, ValueError):
        return None


def parse_response(status, headers, body) -> Response:
    """Turn one HTTP answer into a Response or raise EtcdError / EtcdProtocolError, or
    EtcdMemberError for a member that cannot serve (5xx, codes 300/301)."""
    snippet = body[:SNIPPET]
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        if status >= 500:
            raise EtcdMemberError("etcd member answered HTTP %d: %r" % (status, snippet),
                                  status=status) from None
        raise EtcdProtocolError(
            "etcd answered HTTP %d with a body that is not JSON: %r" % (status, snippet),
            status, snippet) from None
    if isinstance(obj, dict) and "errorCode" in obj:
        try:
            err = error_from_body(obj)
        except (TypeError, ValueError, OverflowError):  # OverflowError: e.g. 1e999
            raise EtcdProtocolError(
                "etcd answered HTTP %d with a malformed error body: %r" % (status, snippet),
                status, snippet) from None
        if status >= 500 or err.error_code in SERVER_CODES:
            raise EtcdMemberError("etcd member cannot serve (HTTP %d): %s" % (status, err),
                                  status=status, code=err.error_code)
        raise err
    if status >= 500:
        raise EtcdMemberError("etcd member answered HTTP %d: %r" % (status, snippet),
                              status=status)
    if not 200 <= status < 300:
        raise EtcdProtocolError(
            "etcd answered HTTP %d without an etcd error body: %r" % (status, snippet),
            status, snippet)
    if not isinstance(obj, dict) or "action" not in obj or "node" not in obj:
        raise EtcdProtocolError(
            "etcd answered HTTP %d with JSON that is not a node response: %r" % (status, snippet),
            status, snippet)
    try:
        node = Node.from_json(obj["node"])
        prev = obj.get("prevNode")
        prev_node = None if prev is None else Node.from_json(prev)
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise EtcdProtocolError(
            "etcd answered HTTP %d with a malformed node (%s): %r" % (status, e, snippet),
            status, snippet) from None
    return Response(action=str(obj["action"]), node=node, prev_node=prev_node,
                    etcd_index=header_index(headers))
