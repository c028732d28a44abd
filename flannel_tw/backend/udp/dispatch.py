# -*- test-case-name: tests.unit.test_udp_dispatch -*-
"""
A short dispatch path for the udp backend's two hot descriptors (the TUN reader and the
UDP port) in Twisted's epoll reactor (issue 16).

Twisted's C{EPollReactor.doPoll} hands every ready descriptor to
C{log.callWithLogger(selectable, reactor._doReadOrWrite, ...)}: a call to C{logPrefix},
a logging context pushed and popped, a C{fileno()} check and the event decoding, 2-3 us
a wake-up when the CPU is warm and more when it is not, paid twice per hop. L{HotDispatch}
replaces the reactor's C{doIteration} (an attribute of that reactor instance, nothing
global) by the same poll and loop in which a descriptor registered with L{HotDispatch.add}
whose event is a plain EPOLLIN gets its C{doRead()} called directly; any other event
(hang-up, error, output) and every other descriptor take Twisted's own path unchanged.
A C{doRead} that raises or returns a reason is handled as Twisted would: logged, and the
descriptor disconnected.

The only thing such a hot C{doRead} does not get is the legacy logging context (the
C{system} field of log lines it emits with twisted.python.log; the data path logs with
twisted.logger). When the reactor is not an epoll reactor (or its C{doIteration} was
already replaced by someone else) nothing is installed and dispatch stays Twisted's.
"""
import errno
import select
import sys

from twisted.python import log

_EPOLLIN = select.EPOLLIN


class HotDispatch:
    """
    The hot-descriptor dispatch of one reactor. C{add(reader)} / C{remove(reader)}
    while the reader is registered with the reactor (C{addReader}); the short path is
    installed while at least one reader is hot and removed with the last one.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._hot = {}            # fd -> reader
        self.installed = False

    def usable(self):
        """True when the reactor is Twisted's epoll reactor with its own doIteration."""
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:       # pragma: no cover - not Linux
            return False
        r = self._reactor
        return (isinstance(r, EPollReactor) and "doIteration" not in vars(r)
                and getattr(type(r), "doIteration", None) is EPollReactor.doPoll)

    def add(self, reader):
        """Dispatch C{reader} (registered with the reactor) directly from now on.
        @return: whether the short path is in use."""
        if not self.installed:
            if not self.usable():
                return False
            self._reactor.doIteration = self._do_poll
            self.installed = True
        self._hot[reader.fileno()] = reader
        return True

    def remove(self, reader):
        """Back to Twisted's dispatch for C{reader}; the last one uninstalls."""
        for fd, r in list(self._hot.items()):
            if r is reader:
                del self._hot[fd]
        if not self._hot and self.installed:
            if vars(self._reactor).get("doIteration") == self._do_poll:
                del self._reactor.doIteration
            self.installed = False

    def _do_poll(self, timeout):
        """EPollReactor.doPoll with the short path for hot readers."""
        r = self._reactor
        if timeout is None:
            timeout = -1
        try:
            events = r._poller.poll(timeout, len(r._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = r._selectables
        hot = self._hot
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == _EPOLLIN and hot.get(fd) is selectable:
                try:
                    why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    r._disconnectSelectable(selectable, why, True)
            else:
                log.callWithLogger(selectable, r._doReadOrWrite, selectable, fd, event)
