"""flannel_tw.etcd.registry_v3: the interface, the v0.20 value form, and the mapping of
IRegistry's calls onto v3 requests (over a scripted client)."""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.etcd.errors import KeyNotFound, NodeExist, TestFailed
from flannel_tw.etcd.registry_v3 import LIST_TTL_BOUND, EtcdV3Registry, v3_value
from flannel_tw.etcd.v3client import b64
from flannel_tw.interfaces import IRegistry

HEADER = {"revision": "12"}


class ScriptedClient:
    """Records each call; answers from a list of dicts (or exceptions)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def _answer(self, name, *args):
        self.calls.append((name,) + args)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def range(self, key, range_end=None, revision=None):
        return self._answer("range", key, range_end)

    def put(self, key, value, lease=None):
        return self._answer("put", key, value, lease)

    def txn(self, compare, success, failure=()):
        return self._answer("txn", compare, success, list(failure))

    def delete_range(self, key, range_end=None, prev_kv=False):
        return self._answer("delete_range", key)

    def lease_grant(self, ttl):
        return self._answer("lease_grant", ttl)

    def lease_revoke(self, lease_id):
        return self._answer("lease_revoke", lease_id)

    def lease_time_to_live(self, lease_id):
        return self._answer("lease_time_to_live", lease_id)

    def watch_once(self, key, range_end, start_revision, on_created=None):
        return self._answer("watch_once", key, range_end, start_revision)


def registry(*answers):
    client = ScriptedClient(*answers)
    return EtcdV3Registry(client, "/coreos.com/network/"), client


class InterfaceTests(unittest.TestCase):
    def test_provides_iregistry(self):
        reg, _ = registry()
        self.assertTrue(verifyObject(IRegistry, reg))
        self.assertEqual(reg.prefix, "/coreos.com/network")


class ValueTests(unittest.TestCase):
    def test_v020_value_form(self):
        self.assertEqual(v3_value('{"PublicIP":"10.0.0.7"}'),
                         '{"PublicIP":"10.0.0.7","PublicIPv6":null}')
        self.assertEqual(v3_value('{"PublicIP":"10.0.0.5","BackendType":"host-gw"}'),
                         '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}')

    def test_value_with_publicipv6_or_other_form_unchanged(self):
        for text in ('{"PublicIP":"10.0.0.5","PublicIPv6":"2001:db8::5"}', '{}', 'x'):
            self.assertEqual(v3_value(text), text)


class MappingTests(unittest.TestCase):
    KEY = "/coreos.com/network/subnets/10.5.1.0-24"

    def test_create_is_txn_on_version_zero_with_a_new_lease(self):
        reg, client = registry({"ID": "77", "TTL": "86400"},
                               {"header": HEADER, "succeeded": True})
        rec = self.successResultOf(reg.create("10.5.1.0-24", '{"PublicIP":"10.0.0.1"}', 86400))
        self.assertEqual((rec.modified_index, rec.ttl, rec.value),
                         (12, 86400, '{"PublicIP":"10.0.0.1","PublicIPv6":null}'))
        self.assertEqual(client.calls[0], ("lease_grant", 86400))
        _, compare, success, failure = client.calls[1]
        self.assertEqual(compare, [{"key": b64(self.KEY), "target": "VERSION",
                                    "result": "EQUAL", "version": "0"}])
        self.assertEqual(success, [{"request_put": {
            "key": b64(self.KEY), "value": b64('{"PublicIP":"10.0.0.1","PublicIPv6":null}'),
            "lease": "77"}}])

    def test_lost_create_is_node_exist_and_revokes_the_lease(self):
        reg, client = registry({"ID": "77", "TTL": "86400"}, {"header": HEADER}, {})
        self.failureResultOf(reg.create("10.5.1.0-24", "{}", 86400), NodeExist)
        self.assertEqual(client.calls[-1], ("lease_revoke", 77))

    def test_cas_by_index_is_mod_revision_compare(self):
        reg, client = registry({"header": HEADER, "succeeded": True})
        rec = self.successResultOf(reg.compare_and_set("10.5.1.0-24", "{}", None, prev_index=9))
        self.assertIsNone(rec.ttl)
        _, compare, success, _ = client.calls[0]
        self.assertEqual(compare[0]["target"], "MOD")
        self.assertEqual(compare[0]["mod_revision"], "9")
        self.assertNotIn("lease", success[0]["request_put"])   # a reservation: no lease

    def test_failed_cas_tells_missing_from_changed(self):
        kv = {"key": b64(self.KEY), "mod_revision": "10"}
        reg, _ = registry({"header": HEADER, "responses": [{"response_range": {"kvs": [kv]}}]},
                          {"header": HEADER, "responses": [{"response_range": {}}]})
        self.failureResultOf(reg.compare_and_set("10.5.1.0-24", "{}", None, prev_index=9),
                             TestFailed)
        self.failureResultOf(reg.compare_and_set("10.5.1.0-24", "{}", None, prev_value="{}"),
                             KeyNotFound)

    def test_delete_of_nothing_is_key_not_found(self):
        reg, _ = registry({"header": HEADER})
        self.failureResultOf(reg.delete("10.5.1.0-24"), KeyNotFound)

    def test_list_ranges_subnets_and_reads_lease_ttls(self):
        kvs = [{"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "5", "lease": "3"},
               {"key": b64("/coreos.com/network/subnets/10.5.2.0-24"), "value": b64("{}"),
                "mod_revision": "6"},
               {"key": b64("/coreos.com/network/subnets/a/deep"), "mod_revision": "7"}]
        reg, client = registry({"header": HEADER, "kvs": kvs}, {"ID": "3", "TTL": "500"})
        records, cursor = self.successResultOf(reg.list())
        self.assertEqual(cursor, 12)
        self.assertEqual([(r.key.rsplit("/", 1)[1], r.ttl, r.modified_index) for r in records],
                         [("10.5.1.0-24", 500, 5), ("10.5.2.0-24", None, 6)])
        self.assertEqual(client.calls[0], ("range", "/coreos.com/network/subnets",
                                           "/coreos.com/network/subnett"))

    def test_daemon_list_asks_no_ttls(self):
        """exact_list_ttls=False: one range, leased keys report the 24 h bound,
        reservations None."""
        kvs = [{"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "5", "lease": "3"},
               {"key": b64("/coreos.com/network/subnets/10.5.2.0-24"), "value": b64("{}"),
                "mod_revision": "6"}]
        client = ScriptedClient({"header": HEADER, "kvs": kvs})
        reg = EtcdV3Registry(client, exact_list_ttls=False)
        records, _ = self.successResultOf(reg.list())
        self.assertEqual([r.ttl for r in records], [LIST_TTL_BOUND, None])
        self.assertEqual([c[0] for c in client.calls], ["range"])

    def test_daemon_watch_asks_ttls_only_for_its_own_keys(self):
        """exact_list_ttls=False: an event on another host's key reports the 24 h bound
        without a TimeToLive; one on a key this registry wrote (the keeper's own
        lease) asks it, as flanneld does for every event."""
        other = "/coreos.com/network/subnets/10.5.2.0-24"
        events = [{"kv": {"key": b64(other), "value": b64("{}"), "mod_revision": "13",
                          "lease": "8"}},
                  {"kv": {"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "14",
                          "lease": "9"}}]
        client = ScriptedClient({"ID": "9", "TTL": "86400"},
                                {"header": HEADER, "succeeded": True},
                                {"events": events}, {"TTL": "86390"})
        reg = EtcdV3Registry(client, exact_list_ttls=False)
        self.successResultOf(reg.create("10.5.1.0-24", "{}", 86400))
        a = self.successResultOf(reg.watch(13))
        b = self.successResultOf(reg.watch(14))
        self.assertEqual([(x.record.key, x.record.ttl) for x in (a, b)],
                         [(other, LIST_TTL_BOUND), (self.KEY, 86390)])
        self.assertEqual([c[0] for c in client.calls],
                         ["lease_grant", "txn", "watch_once", "lease_time_to_live"])
        self.assertEqual(client.calls[-1], ("lease_time_to_live", 9))

    def test_exact_registry_asks_every_events_ttl(self):
        events = [{"kv": {"key": b64("/coreos.com/network/subnets/10.5.2.0-24"),
                          "value": b64("{}"), "mod_revision": "13", "lease": "8"}}]
        reg, client = registry({"events": events}, {"TTL": "500"})
        self.assertEqual(self.successResultOf(reg.watch(13)).record.ttl, 500)
        self.assertEqual(client.calls[-1], ("lease_time_to_live", 8))

    def test_watch_hands_out_every_event_of_a_response(self):
        events = [{"kv": {"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "13"}},
                  {"type": "DELETE", "kv": {"key": b64("/coreos.com/network/subnets/10.5.2.0-24"),
                                            "mod_revision": "13"},
                   "prev_kv": {"value": b64("old")}},
                  {"kv": {"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "14"}}]
        reg, client = registry({"events": events})
        a = self.successResultOf(reg.watch(13))
        b = self.successResultOf(reg.watch(14))
        c = self.successResultOf(reg.watch(14))
        self.assertEqual([(x.removed, x.record.modified_index) for x in (a, b, c)],
                         [(False, 13), (True, 13), (False, 14)])
        self.assertEqual(b.prev_value, "old")
        self.assertEqual(len(client.calls), 1)


class HostileTests(unittest.TestCase):
    """A bad key-value or event from etcd is warned about and skipped; the rest is used."""

    KEY = "/coreos.com/network/subnets/10.5.1.0-24"

    def test_list_skips_malformed_kvs(self):
        kvs = ["x", {"key": "%%%", "mod_revision": "5"},
               {"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "zz"},
               {"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "6"}]
        reg, _ = registry({"header": HEADER, "kvs": kvs})
        records, cursor = self.successResultOf(reg.list())
        self.assertEqual([(r.key, r.modified_index) for r in records], [(self.KEY, 6)])
        self.assertEqual(cursor, 12)

    def test_watch_skips_malformed_and_foreign_events(self):
        good = {"kv": {"key": b64(self.KEY), "value": b64("{}"), "mod_revision": "15"}}
        reg, client = registry(
            {"header": {"revision": "14"}, "events": [
                "x", {"kv": {"key": "%%%"}},
                {"kv": {"key": b64("/coreos.com/network/subnets/a/b"), "mod_revision": "13"}}]},
            {"header": {"revision": "15"}, "events": [{"kv": None}, good]})
        change = self.successResultOf(reg.watch(13))
        self.assertEqual((change.record.key, change.record.modified_index), (self.KEY, 15))
        self.assertEqual([c[3] for c in client.calls], [13, 15])


class ListConcurrencyTests(unittest.TestCase):
    def test_lease_ttls_are_asked_concurrently_up_to_the_limit(self):
        from flannel_tw.etcd import registry_v3
        kvs = [{"key": b64("/coreos.com/network/subnets/10.5.%d.0-24" % i),
                "value": b64("{}"), "mod_revision": str(i + 1), "lease": str(100 + i)}
               for i in range(registry_v3.TTL_CONCURRENCY + 4)]
        reg, client = registry({"header": HEADER, "kvs": kvs})
        held = []
        client.lease_time_to_live = lambda lease: held.append((lease, defer.Deferred())) \
            or held[-1][1]
        d = reg.list()
        self.assertEqual(len(held), registry_v3.TTL_CONCURRENCY)
        while len(held) < len(kvs) or not all(h.called for _, h in held):
            lease, h = next((x for x in held if not x[1].called))
            h.callback({"ID": str(lease), "TTL": str(lease)})
        records, _ = self.successResultOf(d)
        self.assertEqual([r.ttl for r in records], [100 + i for i in range(len(kvs))])

    def test_keys_sharing_a_lease_ask_its_ttl_once(self):
        """A list asks TimeToLive once per distinct lease ID: keys with one lease share
        its TTL (10,000 keys on a few leases: a few requests, not 10,000)."""
        kvs = [{"key": b64("/coreos.com/network/subnets/10.5.%d.0-24" % i),
                "value": b64("{}"), "mod_revision": str(i + 1), "lease": str(7 + i % 2)}
               for i in range(6)]
        kvs.append({"key": b64("/coreos.com/network/subnets/10.5.9.0-24"), "value": b64("{}"),
                    "mod_revision": "20"})
        reg, client = registry({"header": HEADER, "kvs": kvs}, {"ID": "7", "TTL": "70"},
                               {"ID": "8", "TTL": "80"})
        records, _ = self.successResultOf(reg.list())
        self.assertEqual([r.ttl for r in records], [70, 80, 70, 80, 70, 80, None])
        self.assertEqual(sorted(c for c in client.calls if c[0] == "lease_time_to_live"),
                         [("lease_time_to_live", 7), ("lease_time_to_live", 8)])

    def test_a_failed_ttl_fails_the_list(self):
        from flannel_tw.etcd.errors import EtcdUnavailable
        kvs = [{"key": b64("/coreos.com/network/subnets/10.5.1.0-24"), "mod_revision": "3",
                "lease": "9"}]
        reg, _ = registry({"header": HEADER, "kvs": kvs}, EtcdUnavailable({}))
        self.failureResultOf(reg.list(), EtcdUnavailable)
