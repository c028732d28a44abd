"""
The explicit state machines: the engine (lease/machine.py) and the tables of the lease
keeper and the lease watcher, walked: every state reachable, every output a method,
every input the table does not list refused loudly.
"""
from twisted.trial import unittest

from flannel_tw.lease import keeper, watch
from flannel_tw.lease.machine import Machine, UnexpectedInput, check_table

MACHINES = [
    ("keeper", keeper.TRANSITIONS, keeper.STATES, keeper.HELD, keeper.LeaseKeeper),
    ("watcher", watch.TRANSITIONS, watch.STATES, watch.IDLE, watch.LeaseWatcher),
]


class Recorder:
    def __init__(self):
        self.calls = []
        self.machine = None

    def a(self, *args):
        self.calls.append(("a", args))
        self.machine.fire("go")          # an input from inside an output: queued
        self.calls.append(("a done", self.machine.state))

    def b(self, *args):
        self.calls.append(("b", args))


TABLE = {("s", "start"): ("t", "a"), ("t", "go"): ("u", "b"), ("u", "stop"): ("s", None)}


class EngineTests(unittest.TestCase):
    def test_outputs_get_the_input_arguments_and_are_not_re_entered(self):
        owner = Recorder()
        owner.machine = m = Machine(owner, TABLE, "s")
        m.fire("start", 1, 2)
        self.assertEqual(owner.calls, [("a", (1, 2)), ("a done", "t"), ("b", ())])
        self.assertEqual(m.state, "u")

    def test_unknown_input_is_refused_and_changes_nothing(self):
        m = Machine(Recorder(), TABLE, "s")
        self.assertRaises(UnexpectedInput, m.fire, "go")
        self.assertEqual(m.state, "s")

    def test_check_table_finds_unreachable_states_and_unknown_outputs(self):
        check_table(TABLE, ("s", "t", "u"), "s", Recorder)
        self.assertRaises(ValueError, check_table, TABLE, ("s", "t", "u", "v"), "s", Recorder)
        self.assertRaises(ValueError, check_table, {("s", "x"): ("s", "nope")}, ("s",), "s",
                          Recorder)
        self.assertRaises(ValueError, check_table, {("s", "x"): ("w", None)}, ("s",), "s",
                          Recorder)


class TableWalkTests(unittest.TestCase):
    """Each table is walked: its states, its inputs, its outputs."""

    def test_every_state_reachable_and_every_output_a_method(self):
        for name, table, states, initial, cls in MACHINES:
            check_table(table, states, initial, cls)
            self.assertEqual({s for s, _ in table} | {n for n, _ in table.values()},
                             set(states), name)

    def test_inputs_not_in_the_table_are_refused_in_every_state(self):
        for name, table, states, initial, cls in MACHINES:
            inputs = {i for _, i in table}
            for state in states:
                m = Machine(None, table, state)
                accepted = set(m.inputs(state))
                for i in sorted(inputs - accepted):
                    self.assertRaises(UnexpectedInput, m.fire, i)
                    self.assertEqual(m.state, state, (name, state, i))
                self.assertIn("stop", accepted, (name, state))

    def test_stop_is_final(self):
        for name, table, states, initial, cls in MACHINES:
            stopped = [s for s in states if s == "stopped"]
            self.assertEqual(stopped, ["stopped"])
            for (state, i), (new, _) in table.items():
                if state == "stopped":
                    self.assertEqual(new, "stopped", (name, i))

    def test_keeper_events_are_accepted_in_every_state(self):
        """The watcher may report our key at any time: no state refuses an event."""
        for state in keeper.STATES:
            for ev in ("ev_removed", "ev_taken", "ev_stand_down", "ev_defend", "ev_refresh",
                       "ev_other"):
                self.assertIn((state, ev), keeper.TRANSITIONS)

    def test_keeper_lost_means_lost_only_where_it_is(self):
        """One meaning per state: a renewal retry holds the lease, a re-acquisition
        retry does not (once a flag beside one RETRYING state)."""
        self.assertEqual(keeper.TRANSITIONS[(keeper.RETRYING, "due")][0], keeper.RENEWING)
        self.assertEqual(keeper.TRANSITIONS[(keeper.LOST, "due")][0], keeper.REACQUIRING)
