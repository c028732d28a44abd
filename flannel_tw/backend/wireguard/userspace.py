# -*- test-case-name: tests.unit.test_wg_dev, tests.lab.test_wg_dev -*-
"""
wireguard-go, the userspace WireGuard, started and supervised by this daemon.

wireguard-go puts its UAPI socket in C{/var/run/wireguard/<name>.sock}, one directory
per filesystem, not per network namespace: two daemons in two network namespaces would
both make C{flannel-wg.sock} there. So wireguard-go runs in this daemon's network
namespace but in a private mount namespace of its own, where this daemon's directory
(C{<state dir>/wireguard}, beside the subnet file) is bind-mounted over
C{/var/run/wireguard}; the daemon talks to the socket in its own directory.

When wireguard-go dies its link goes with it: the death is logged once, wireguard-go is
started again after a backoff, and the device re-sends the key, the port and every peer,
then tells its owner (who re-adds addresses and routes).
"""
import collections
import os
import socket

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from flannel_tw.backend.wireguard import uapi
from flannel_tw.interfaces import IWireguardDevice

UAPI_DIR = "/var/run/wireguard"
# $1 the daemon's directory, $2 wireguard-go, $3 the interface name.
_SCRIPT = ('mkdir -p %s && mount --bind "$1" %s && exec "$2" -f "$3"' % (UAPI_DIR, UAPI_DIR))


class WireguardGoError(Exception):
    """wireguard-go did not start (exited, or no UAPI socket in time)."""


#: the longest path a UNIX socket address (sockaddr_un.sun_path) holds, without its NUL
UNIX_PATH_MAX = 107


def wireguard_go_argv(unshare, executable, name, run_dir):
    """The command line: wireguard-go in a private mount namespace, run_dir as /var/run/wireguard."""
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", _SCRIPT,
            "wireguard-go", run_dir, executable, name]


def probe_socket(path):
    """@return: True if a UNIX stream socket at C{path} accepts a connection (never blocks)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.connect(path)
        return True
    except BlockingIOError:
        return True                 # listening, backlog full
    except OSError:
        return False
    finally:
        s.close()


def describe_exit(status):
    """A ProcessDone/ProcessTerminated as "exit 1" or "signal 9"."""
    sig = getattr(status, "signal", None)
    if sig is not None:
        return "signal %d" % (sig,)
    return "exit %s" % (getattr(status, "exitCode", "?"),)


class _GoProtocol(protocol.ProcessProtocol):
    def __init__(self, owner):
        self._owner = owner
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd, data):
        buf = self._partial.get(fd, b"") + data
        *lines, self._partial[fd] = buf.split(b"\n")
        if len(self._partial[fd]) > 4096:
            lines.append(self._partial[fd])
            self._partial[fd] = b""
        for line in lines:
            self._owner._output(line)

    def processEnded(self, reason):
        self._owner._ended(self, reason)


class WireguardGo:
    """
    Supervises one wireguard-go process for the interface C{name}.

    @param reactor: IReactorProcess + IReactorTime.
    @param run_dir: this daemon's own directory bind-mounted over /var/run/wireguard; the
        socket is C{<run_dir>/<name>.sock}.
    @param on_restarted: C{() -> None or Deferred}, called after a restart once the new
        socket answers (not after the first start).
    @param backoff: (first delay, max delay, factor) in seconds between restarts; the
        delay starts again from the first after the process ran C{stable_after} seconds.
    @param spawn: C{(protocol, argv, env) -> IProcessTransport}; default
        C{reactor.spawnProcess}.
    @param probe: C{(path) -> bool}, whether the socket answers; default L{probe_socket}.
    @param prefix: argv put before the command (e.g. C{ip netns exec NS}; tests).
    """
    log = Logger()

    def __init__(self, reactor, name, run_dir, executable, unshare="unshare",
                 on_restarted=None, socket_timeout=10.0, stop_grace=5.0,
                 backoff=(0.5, 30.0, 2.0), stable_after=60.0, poll_interval=0.05,
                 spawn=None, probe=None, prefix=()):
        self._reactor = reactor
        self.name = name
        self.run_dir = run_dir
        self.socket_path = os.path.join(run_dir, name + ".sock")
        self._dir_fd = None
        self.argv = list(prefix) + wireguard_go_argv(unshare, executable, name, run_dir)
        self._on_restarted = on_restarted
        self._socket_timeout = socket_timeout
        self._stop_grace = stop_grace
        self._backoff = backoff
        self._stable_after = stable_after
        self._poll_interval = poll_interval
        self._spawn = spawn or self._spawn_process
        self._probe = probe or probe_socket
        # stopped -> starting -> running -> (died) waiting -> starting ...; starting ->
        # dying (no socket in time: killed) -> stopped (first start) or waiting; any ->
        # stopping -> stopped.
        self.state = "stopped"
        self._proto = None
        self._transport = None
        self._started_at = None
        self._failures = 0
        self._timer = None          # the socket poll, the restart or the SIGKILL
        self._starting = None       # Deferred of the spawn in progress
        self._stopping = []
        self._first = True
        self._tail = collections.deque(maxlen=6)
        self.restarts = 0

    def _spawn_process(self, proto, argv, env):
        return self._reactor.spawnProcess(proto, argv[0], argv, env=env)

    def _output(self, line):
        text = line.decode("utf-8", "replace").strip()
        if not text or text[0] in "\u250c\u2502\u2514":       # wireguard-go's banner box
            return
        self._tail.append(text[:300])
        self.log.info("wireguard-go {name}: {line}", name=self.name, line=text[:300])

    def start(self):
        """
        Start wireguard-go. Fires with None once its socket answers; fails with
        L{WireguardGoError} if it exits first or no socket comes within the timeout (the
        process is then killed). A socket still served by an older wireguard-go (one whose
        link was just deleted, on its way out) is waited for first: its exit would
        otherwise unlink the new process's socket.
        """
        if self.state != "stopped":
            raise RuntimeError("wireguard-go %s already started" % (self.name,))
        self._first = True
        started = self._begin()
        self._said_old = False
        self._clear_old()
        return started

    def _begin(self):
        self.state = "starting"
        self._tail.clear()
        self._deadline = self._reactor.seconds() + self._socket_timeout
        self._starting = started = defer.Deferred()
        return started

    def _clear_old(self):
        self._timer = None
        if self.state != "starting" or self._proto is not None:
            return
        if not self._probe(self.connect_path):
            self._spawn_now()
            return
        if self._reactor.seconds() >= self._deadline:
            self._fail_start(WireguardGoError(
                "the UAPI socket %s is still served by another wireguard-go after %ss; "
                "stop it" % (self.socket_path, self._socket_timeout)))
            self.state = "stopped"
            return
        if not self._said_old:
            self._said_old = True
            self.log.warn("wireguard-go {name}: an older wireguard-go still serves {sock}; "
                          "waiting for it to go", name=self.name, sock=self.socket_path)
        self._timer = self._reactor.callLater(self._poll_interval, self._clear_old)

    @property
    def connect_path(self):
        """
        The address to connect to: C{socket_path}, or when that is longer than a UNIX
        socket address holds (107 bytes), the same socket as
        C{/proc/self/fd/<fd of run_dir>/<name>.sock} (the directory's fd is kept open).
        """
        if len(os.fsencode(self.socket_path)) <= UNIX_PATH_MAX:
            return self.socket_path
        if self._dir_fd is None:
            try:
                self._dir_fd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return self.socket_path     # no directory yet: nothing to connect to anyway
        return "/proc/self/fd/%d/%s.sock" % (self._dir_fd, self.name)

    def _launch(self):
        started = self._begin()
        self._spawn_now()
        return started

    def _spawn_now(self):
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        try:
            os.unlink(self.socket_path)         # a socket left by a killed wireguard-go
        except FileNotFoundError:
            pass
        self._proto = _GoProtocol(self)
        env = dict(os.environ)
        env["WG_PROCESS_FOREGROUND"] = "1"
        self._started_at = self._reactor.seconds()
        self._transport = self._spawn(self._proto, self.argv, env)
        self._deadline = self._started_at + self._socket_timeout
        self._poll()

    def _poll(self):
        self._timer = None
        if self.state != "starting":
            return
        if self._probe(self.connect_path):
            self.state = "running"
            self._first = False
            d, self._starting = self._starting, None
            d.callback(None)
            return
        if self._reactor.seconds() >= self._deadline:
            err = WireguardGoError("wireguard-go %s made no UAPI socket %s within %ss%s" % (
                self.name, self.socket_path, self._socket_timeout, self._said()))
            if not self._first:
                self.log.warn("{err}; killing it", err=str(err))
            self._fail_start(err)
            self._signal("KILL")
            return
        self._timer = self._reactor.callLater(self._poll_interval, self._poll)

    def _said(self):
        return (": " + " | ".join(self._tail)) if self._tail else ""

    def _fail_start(self, err):
        self.state = "dying"
        d, self._starting = self._starting, None
        if d is not None:
            d.errback(err)

    def _signal(self, sig):
        try:
            self._transport.signalProcess(sig)
        except Exception:       # ProcessExitedAlready, or a transport already gone
            pass

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _ended(self, proto, reason):
        if proto is not self._proto:
            return
        self._cancel_timer()
        self._proto = self._transport = None
        status = describe_exit(reason.value)
        if self.state == "stopping":
            self.state = "stopped"
            self.log.info("wireguard-go {name} stopped", name=self.name)
            waiting, self._stopping = self._stopping, []
            for d in waiting:
                d.callback(None)
            return
        if self.state == "starting":
            self._fail_start(WireguardGoError("wireguard-go %s exited at start (%s)%s" % (
                self.name, status, self._said())))
        if self._first:
            self.state = "stopped"          # start() failed; the caller decides
            return
        ran = self._reactor.seconds() - self._started_at
        if ran >= self._stable_after:
            self._failures = 0
        delay = min(self._backoff[0] * self._backoff[2] ** self._failures, self._backoff[1])
        self._failures += 1
        self.log.warn("wireguard-go {name} exited ({status}) after {ran:.1f}s; restarting in "
                      "{delay}s{said}", name=self.name, status=status, ran=ran, delay=delay,
                      said=self._said())
        self.state = "waiting"
        self._timer = self._reactor.callLater(delay, self._restart)

    def _restart(self):
        self._timer = None
        self.restarts += 1
        d = self._launch()

        def up(_):
            self.log.info("wireguard-go {name} is back (restart {n})", name=self.name,
                          n=self.restarts)
            if self._on_restarted is not None:
                return defer.maybeDeferred(self._on_restarted)

        def failed(f):
            # An exit or a silent socket was logged (and the next restart planned) by
            # _ended; anything else is the re-apply failing.
            if not f.check(WireguardGoError):
                self.log.failure("re-applying wireguard-go {name}'s configuration",
                                 failure=f, name=self.name)

        d.addCallback(up).addErrback(failed)

    @property
    def pid(self):
        return getattr(self._transport, "pid", None)

    def stop(self):
        """
        Stop wireguard-go (SIGTERM, then SIGKILL after the grace period) and stop
        restarting it. Fires when no process is left. Idempotent.
        """
        self._cancel_timer()
        if self._starting is not None:
            d, self._starting = self._starting, None
            d.errback(WireguardGoError("wireguard-go %s stopped while starting" % (self.name,)))
        if self._proto is None:
            self.state = "stopped"
            return defer.succeed(None)
        d = defer.Deferred()
        self._stopping.append(d)
        if self.state != "stopping":
            self.state = "stopping"
            self._signal("TERM")
            self._timer = self._reactor.callLater(self._stop_grace, self._kill)
        return d

    def _kill(self):
        self._timer = None
        self.log.warn("wireguard-go {name} still running {grace}s after SIGTERM: SIGKILL",
                      name=self.name, grace=self._stop_grace)
        self._signal("KILL")


@implementer(IWireguardDevice)
class UserspaceDevice:
    """
    A wireguard-go device. It keeps what it was told (key, port, peers) so that a
    restarted wireguard-go gets all of it again.

    @param links: the netlink helper (L{flannel_tw.backend.wireguard.kernel.Links}).
    @param to_thread: C{(f, *args) -> Deferred}.
    """
    kind = "userspace"
    log = Logger()

    def __init__(self, name, process, client, links, to_thread, on_recreated=None):
        self.name = name
        self.process = process
        self.client = client
        self._links = links
        self._to_thread = to_thread
        self._on_recreated = on_recreated
        self._private_key = None
        self._listen_port = None
        self._peers = {}
        self._closed = None

    def configure(self, private_key, listen_port):
        """Fires when wireguard-go has the key and port and the link is up; UapiError/ValueError."""
        try:
            uapi.encode_set(private_key=private_key, listen_port=listen_port)
        except ValueError as e:
            return defer.fail(e)
        self._private_key, self._listen_port = private_key, listen_port
        d = self.client.set_device(private_key, listen_port)
        d.addCallback(lambda _: self._to_thread(self._links.up, self.name))
        return d.addCallback(lambda _: None)

    def set_peers(self, upserts, removals):
        """
        One UAPI exchange. Fails with L{uapi.UapiError} (e.g. wireguard-go is down: the
        change is kept and sent again when it is back) or ValueError (nothing changed).
        """
        upserts, removals = list(upserts), list(removals)
        try:
            uapi.encode_set(upserts=upserts, removals=removals)
        except ValueError as e:
            return defer.fail(e)
        for key in removals:
            self._peers.pop(key, None)
        for peer in upserts:
            self._peers[peer.public_key] = peer
        return self.client.set_peers(upserts, removals)

    def peers(self):
        return self.client.get().addCallback(lambda state: state.peers)

    def reapply(self):
        """Send everything again to a new wireguard-go (replace_peers=true), bring the link up."""
        d = self.client.set(private_key=self._private_key, listen_port=self._listen_port,
                            replace_peers=True, upserts=list(self._peers.values()))
        d.addCallback(lambda _: self._to_thread(self._links.up, self.name))

        def told(_):
            self.log.info("wireguard-go {name} reconfigured: key, port and {n} peers re-sent",
                          name=self.name, n=len(self._peers))
            if self._on_recreated is not None:
                return self._on_recreated(self)
        return d.addCallback(told).addCallback(lambda _: None)

    def close(self):
        """Stop wireguard-go (its link goes with it). Idempotent; fires when it is gone."""
        if self._closed is None:
            self._closed = []
            d = self.process.stop()
            d.addCallback(lambda _: self._to_thread(self._links.delete, self.name))
            d.addBoth(self._close_done)
        out = defer.Deferred()
        if isinstance(self._closed, list):
            self._closed.append(out)
        else:
            out.callback(None)
        return out

    def _close_done(self, result):
        waiting, self._closed = self._closed, True
        if isinstance(result, Failure):
            self.log.failure("closing wireguard-go {name}", failure=result, name=self.name)
        for d in waiting:
            d.callback(None)
