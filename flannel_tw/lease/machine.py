# -*- test-case-name: tests.unit.test_machine -*-
"""
A small explicit state machine: one transition table, checked at every input.

The table maps C{(state, input)} to C{(new_state, output)}: C{output} names a method of
the owner (or is None), called with the input's arguments after the state has changed.
An input the table does not list for the current state is a bug and raises
L{UnexpectedInput}: nothing is accepted silently, so an input that is ignored in a state
is listed with the state unchanged and no output.

Outputs are never re-entered: an input fired while an output runs (a Deferred that
fires at once, a callback) is queued and handled after that output returns, in order.

(automat 25.4's MethodicalMachine, as twisted.application.internet.ClientService uses
it, was considered: it runs an input fired from inside an output at once, nested, so a
Deferred that fires synchronously re-enters the machine; and its table lives in
decorators, where a test cannot walk it. A plain dict and this queue do both.)
"""
from collections import deque


class UnexpectedInput(Exception):
    """An input the transition table does not list for the current state."""


def check_table(table, states, initial, outputs_of):
    """
    Raise ValueError unless every state of C{table} is in C{states}, every output is a
    method of C{outputs_of} (a class), and every state is reachable from C{initial}.
    """
    for (state, _input), (new, output) in table.items():
        if state not in states or new not in states:
            raise ValueError("unknown state in %r" % ((state, _input, new),))
        if output is not None and not callable(getattr(outputs_of, output, None)):
            raise ValueError("unknown output %r" % (output,))
    seen, todo = {initial}, [initial]
    while todo:
        state = todo.pop()
        for (src, _input), (new, _output) in table.items():
            if src == state and new not in seen:
                seen.add(new)
                todo.append(new)
    if seen != set(states):
        raise ValueError("unreachable states: %r" % (sorted(set(states) - seen),))


class Machine:
    """
    @param owner: the object whose methods the outputs name.
    @param table: C{{(state, input): (new_state, output_name_or_None)}}.
    @param state: the initial state.
    """

    def __init__(self, owner, table, state):
        self._owner = owner
        self._table = table
        self.state = state
        self._queue = deque()
        self._running = False

    def inputs(self, state):
        """The inputs the table accepts in C{state}."""
        return sorted(i for (s, i) in self._table if s == state)

    def fire(self, input, *args):
        self._queue.append((input, args))
        if self._running:
            return
        self._running = True
        try:
            while self._queue:
                input, args = self._queue.popleft()
                try:
                    new, output = self._table[(self.state, input)]
                except KeyError:
                    self._queue.clear()
                    raise UnexpectedInput("%s: input %r in state %r" % (
                        type(self._owner).__name__, input, self.state)) from None
                self.state = new
                if output is not None:
                    getattr(self._owner, output)(*args)
        except BaseException:
            self._queue.clear()
            raise
        finally:
            self._running = False
