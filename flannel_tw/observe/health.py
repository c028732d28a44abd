# -*- test-case-name: tests.integration.test_health, tests.unit.test_status -*-
"""
``/healthz`` and ``/readyz`` (twisted.web), on --healthz-ip/--healthz-port.

/healthz is 200 only while the daemon holds its lease and its etcd watch works,
with a JSON body describing the lease, renewals, the watch and the backend; 503
otherwise (flanneld v0.10 always said 200). /readyz is 200 ``flanneld is ready``
once subnet.env is written, 503 ``flanneld is not ready yet`` before (as newest flanneld).
Both read only the daemon's status snapshot (L{flannel_tw.observe.status}), which also
judges health.
"""
import json

from twisted.application import strports
from twisted.web import resource

from flannel_tw.observe.logs import QuietSite
from flannel_tw.observe.status import health_body


class HealthzResource(resource.Resource):
    isLeaf = True

    def __init__(self, status):
        resource.Resource.__init__(self)
        self._status = status

    def render_GET(self, request):
        body = health_body(self._status())
        request.setResponseCode(200 if body["healthy"] else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


class ReadyzResource(resource.Resource):
    isLeaf = True

    def __init__(self, status):
        resource.Resource.__init__(self)
        self._status = status

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self._status().ready:
            return b"flanneld is ready"
        request.setResponseCode(503)
        return b"flanneld is not ready yet"


def health_root(status):
    """/healthz and /readyz over C{status}, a callable returning a L{DaemonStatus}."""
    root = resource.Resource()
    root.putChild(b"healthz", HealthzResource(status))
    root.putChild(b"readyz", ReadyzResource(status))
    return root


def health_service(status, reactor, ip, port):
    """A TCP server service for the health endpoints."""
    site = QuietSite(health_root(status), name="healthz")
    return strports.service("tcp:%d:interface=%s" % (port, ip), site, reactor=reactor)
