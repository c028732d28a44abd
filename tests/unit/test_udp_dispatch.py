"""Tests for flannel_tw.backend.udp.dispatch (the hot-descriptor dispatch, issue 16), on
epoll reactor instances of their own, iterated by hand (never run)."""
import socket

from twisted.internet import epollreactor, selectreactor
from twisted.python import context, log
from twisted.trial.unittest import TestCase

from flannel_tw.backend.udp import dispatch as D


class Reader:
    """A socketpair end as a reactor reader that records its calls."""

    def __init__(self, test, fail=False):
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        test.addCleanup(self.sock.close)
        test.addCleanup(self.peer.close)
        self.calls = []
        self.fail = fail

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "test-reader"

    def doRead(self):
        self.calls.append(("read", context.get(log.ILogContext).get("system", "-")))
        if self.fail:
            raise RuntimeError("boom")
        try:
            while self.sock.recv(100):
                pass
        except BlockingIOError:
            pass

    def connectionLost(self, reason):
        self.calls.append(("lost", reason.type))


class HotDispatchTests(TestCase):

    def setUp(self):
        self.reactor = epollreactor.EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.hot = D.HotDispatch(self.reactor)
        self.logged = []
        real = D.log.callWithLogger

        def callWithLogger(logger, *a, **kw):
            self.logged.append(logger)
            return real(logger, *a, **kw)
        self.patch(D.log, "callWithLogger", callWithLogger)

    def reader(self, **kw):
        r = Reader(self, **kw)
        self.reactor.addReader(r)
        self.addCleanup(self.reactor.removeReader, r)
        return r

    def test_hot_reader_read_without_the_logging_context(self):
        hot, cold = self.reader(), self.reader()
        self.assertTrue(self.hot.add(hot))
        self.assertIn("doIteration", vars(self.reactor))
        hot.peer.send(b"a")
        cold.peer.send(b"b")
        self.reactor.doIteration(0)
        self.assertEqual(hot.calls, [("read", "-")])
        self.assertEqual(cold.calls, [("read", "test-reader")])
        self.assertEqual(self.logged, [cold])

    def test_hang_up_takes_twisteds_path(self):
        """An event other than a plain EPOLLIN (here EPOLLIN|EPOLLHUP) is Twisted's."""
        hot = self.reader()
        self.hot.add(hot)
        hot.peer.send(b"a")
        hot.peer.close()
        self.reactor.doIteration(0)
        self.assertEqual(self.logged, [hot])
        self.assertEqual(hot.calls[0], ("read", "test-reader"))

    def test_raising_reader_is_logged_and_disconnected(self):
        hot = self.reader(fail=True)
        self.hot.add(hot)
        hot.peer.send(b"a")
        self.reactor.doIteration(0)
        self.assertEqual([c[0] for c in hot.calls], ["read", "lost"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(hot, self.reactor.getReaders())

    def test_last_remove_uninstalls(self):
        a, b = self.reader(), self.reader()
        self.hot.add(a)
        self.hot.add(b)
        self.hot.remove(a)
        self.assertTrue(self.hot.installed)
        self.hot.remove(b)
        self.assertFalse(self.hot.installed)
        self.assertNotIn("doIteration", vars(self.reactor))
        a.peer.send(b"a")
        self.reactor.doIteration(0)
        self.assertEqual(a.calls, [("read", "test-reader")])

    def test_other_reactors_keep_their_dispatch(self):
        r = selectreactor.SelectReactor()
        self.assertFalse(D.HotDispatch(r).add(Reader(self)))
        self.assertNotIn("doIteration", vars(r))

    def test_replaced_doiteration_is_left_alone(self):
        def mine(timeout):
            pass
        self.reactor.doIteration = mine
        self.assertFalse(self.hot.add(self.reader()))
        self.assertIs(self.reactor.doIteration, mine)
