# -*- test-case-name: tests.unit.test_machine, tests.unit.test_keeper -*-
"""
The lease keeper's states and its transition table (L{flannel_tw.lease.keeper} says what
each state means; L{flannel_tw.lease.machine} runs the table). Outputs are the names of
L{flannel_tw.lease.keeper.LeaseKeeper}'s methods.
"""

(HELD, RENEWING, RETRYING, INSPECTING, DEFENDING, REACQUIRING, LOST, CONFLICT,
 STOPPED) = ("held", "renewing", "retrying", "inspecting", "defending", "reacquiring",
             "lost", "conflict", "stopped")
STATES = (HELD, RENEWING, RETRYING, INSPECTING, DEFENDING, REACQUIRING, LOST, CONFLICT,
          STOPPED)

# Inputs. "due": the timer. Answers: renewed, renew_error (etcd/transport), renew_cas
# (TestFailed), renew_gone (KeyNotFound); read_* (INSPECTING's read of the key: taken =
# another PublicIP, restored = older index, stand_down / defend = our PublicIP, newer);
# acquired, acquire_error. Watcher events about our key: ev_removed, ev_taken,
# ev_stand_down / ev_defend (our PublicIP, newer index), ev_refresh (same write, a TTL),
# ev_other (older, or nothing to do).
_EVENTS = ("ev_removed", "ev_taken", "ev_stand_down", "ev_defend", "ev_refresh", "ev_other")


def _table():
    t = {}
    for state in STATES:
        t[(state, "stop")] = (STOPPED, "_halt")
    t[(HELD, "start")] = (HELD, "_begin")
    for state in (HELD, RETRYING):
        t[(state, "due")] = (RENEWING, "_send_renewal")
    t[(LOST, "due")] = (REACQUIRING, "_send_acquisition")
    for state in (RENEWING, DEFENDING):
        t[(state, "renewed")] = (HELD, "_renewed" if state == RENEWING else "_wrote_back")
        t[(state, "renew_error")] = (RETRYING, "_retry_renewal")
        t[(state, "renew_cas")] = (INSPECTING, "_inspect")
        t[(state, "renew_gone")] = (REACQUIRING, "_lease_gone")
    t[(INSPECTING, "read_taken")] = (REACQUIRING, "_taken")
    t[(INSPECTING, "read_restored")] = (RENEWING, "_take_back")
    t[(INSPECTING, "read_stand_down")] = (CONFLICT, "_stand_down")
    t[(INSPECTING, "read_defend")] = (DEFENDING, "_write_back")
    t[(INSPECTING, "read_gone")] = (REACQUIRING, "_lease_gone_on_read")
    t[(INSPECTING, "read_error")] = (RETRYING, "_retry_renewal")
    t[(REACQUIRING, "acquired")] = (HELD, "_acquired")
    t[(REACQUIRING, "acquire_error")] = (LOST, "_retry_acquisition")
    for state in STATES:     # watcher events about our key
        for ev in _EVENTS:
            t[(state, ev)] = (state, None)
    for state in (HELD, RENEWING, RETRYING, INSPECTING, DEFENDING, LOST, CONFLICT):
        t[(state, "ev_removed")] = (REACQUIRING, "_event_removed")
        t[(state, "ev_taken")] = (REACQUIRING, "_taken")
    for state in (HELD, RETRYING, LOST):   # else a write of ours is in flight: its CAS tells
        t[(state, "ev_stand_down")] = (CONFLICT, "_stand_down")
        t[(state, "ev_defend")] = (DEFENDING, "_write_back")
    t[(HELD, "ev_refresh")] = (HELD, "_refresh")
    return t


TRANSITIONS = _table()
