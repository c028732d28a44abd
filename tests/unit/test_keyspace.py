"""--etcd-api=auto: the pure choice (flannel_tw.model.keyspace) and the manager that
reads both keyspaces and then runs on the chosen one (flannel_tw.lease.keyspace), over
fake registries."""
import collections
from ipaddress import IPv4Network

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from flannel_tw.etcd.errors import EtcdProtocolError, EtcdUnavailable, KeyNotFound
from flannel_tw.interfaces import IRegistry, ISubnetManager
from flannel_tw.lease.keyspace import KeyspaceClient, KeyspaceManager, NoConfig, NotChosen
from flannel_tw.model.config import ConfigError
from flannel_tw.model.keyspace import KeyspaceConflict, choose_keyspace

A = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
A_SPACED = '{ "Backend": {"Type":"vxlan"},\n "Network":"10.5.0.0/16" }'
B = '{"Network": "10.6.0.0/16", "Backend": {"Type": "vxlan"}}'


class ChooseTests(unittest.TestCase):
    def test_neither(self):
        self.assertIsNone(choose_keyspace(None, None))

    def test_only_v2(self):
        c = choose_keyspace(A, None, "V2URL", "V3KEY")
        self.assertEqual((c.api, c.text), ("v2", A))
        self.assertIn("only in the v2 keyspace (V2URL)", c.reason)

    def test_only_v3(self):
        c = choose_keyspace(None, B, "V2URL", "V3KEY")
        self.assertEqual((c.api, c.text), ("v3", B))
        self.assertIn("only in the v3 keyspace (V3KEY)", c.reason)

    def test_both_same_text_or_same_parsed_config_is_v3(self):
        for v2 in (A, A_SPACED):
            c = choose_keyspace(v2, A, "V2URL", "V3KEY")
            self.assertEqual((c.api, c.text), ("v3", A))
            self.assertIn("same network config", c.reason)

    def test_both_same_invalid_text_is_v3(self):
        # the same (invalid) text: v3; the config check that follows reports it
        self.assertEqual(choose_keyspace("nope", "nope").api, "v3")

    def test_differ_refuses(self):
        for v2, v3 in ((A, B), ("nope", A), (A, "{")):
            with self.assertRaises(KeyspaceConflict) as cm:
                choose_keyspace(v2, v3, "V2URL", "V3KEY")
            text = str(cm.exception)
            for part in ("V2URL", "V3KEY", repr(v2), repr(v3), "--etcd-api=v2|v3",
                         "FLANNELD_ETCD_API"):
                self.assertIn(part, text)


@implementer(IRegistry)
class FakeRegistry:
    def __init__(self, prefix, answer):
        self.prefix = prefix
        self.answer = answer
        self.asked = 0

    def get_config(self):
        self.asked += 1
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)

    def list(self):
        return defer.succeed(([], 7))


class FakeClient:
    def __init__(self, name):
        self.name = name
        self.endpoints = ["http://e:2379"]
        self.error_counts = collections.Counter()
        self.closed = False

    def watch_silence(self):
        return 3.0 if self.name == "v3" else 5.0

    def close(self):
        self.closed = True
        return defer.succeed(None)


def missing():
    return KeyNotFound(100, "Key not found", "/p/config", 1)


class ManagerTests(unittest.TestCase):
    def make(self, v2, v3):
        self.registries = {"v2": FakeRegistry("/p", v2), "v3": FakeRegistry("/p", v3)}
        self.clients = {"v2": FakeClient("v2"), "v3": FakeClient("v3")}
        self.builds = []

        def build(api):
            self.builds.append(api)
            return self.clients[api], self.registries[api]
        return KeyspaceManager(build, "/p")

    def test_interface(self):
        verifyObject(ISubnetManager, self.make(missing(), missing()))

    def test_only_v2_then_runs_on_v2(self):
        m = self.make(A, missing())
        config = self.successResultOf(m.get_network_config())
        self.assertEqual(config.network, IPv4Network("10.5.0.0/16"))
        self.assertEqual(m.chosen, "v2")
        self.assertIs(m.manager._registry, self.registries["v2"])
        self.assertEqual(self.successResultOf(m.list_leases()), ([], 7))
        # once chosen, only the chosen keyspace is read
        self.successResultOf(m.get_network_config())
        self.assertEqual((self.registries["v2"].asked, self.registries["v3"].asked), (2, 1))

    def test_v2_disabled_404_is_no_v2_config(self):
        m = self.make(EtcdProtocolError("etcd answered HTTP 404 ...", 404, b"404 page not "
                                        b"found"), B)
        self.successResultOf(m.get_network_config())
        self.assertEqual(m.chosen, "v3")
        self.assertIs(m.manager._registry, self.registries["v3"])
        self.assertIn("only in the v3 keyspace", m.reason)

    def test_both_same_is_v3_and_logged_once(self):
        m = self.make(A_SPACED, A)
        logged = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.successResultOf(m.get_network_config())
        self.successResultOf(m.get_network_config())
        self.assertEqual(m.chosen, "v3")
        lines = [e for e in logged if "keyspace" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["api"], "v3")
        self.assertIn("same network config", lines[0]["reason"])

    def test_conflict_chooses_nothing_until_fixed(self):
        m = self.make(A, B)
        self.failureResultOf(m.get_network_config(), KeyspaceConflict)
        self.assertIsNone(m.chosen)
        self.assertRaises(NotChosen, m.list_leases)
        self.registries["v2"].answer = missing()     # the operator deletes the v2 one
        self.successResultOf(m.get_network_config())
        self.assertEqual(m.chosen, "v3")

    def test_neither_and_invalid_choose_nothing(self):
        m = self.make(missing(), missing())
        f = self.failureResultOf(m.get_network_config(), NoConfig)
        self.assertIn("v2 v2 key /p/config, v3 v3 key /p/config", str(f.value))
        self.registries["v3"].answer = '{"Network": "bad"}'
        self.failureResultOf(m.get_network_config(), ConfigError)
        self.assertIsNone(m.chosen)

    def test_other_errors_are_not_absence(self):
        # a v3 404 or an unreachable etcd is an error (keep waiting), not "no config"
        m = self.make(A, EtcdProtocolError("x", 404, b""))
        self.failureResultOf(m.get_network_config(), EtcdProtocolError)
        m = self.make(EtcdUnavailable({"http://e": Exception("refused")}), A)
        self.failureResultOf(m.get_network_config(), EtcdUnavailable)
        self.assertIsNone(m.chosen)

    def test_client_view(self):
        m = self.make(missing(), A)
        c = KeyspaceClient(m)
        self.assertEqual(c.endpoints, ["http://e:2379"])        # before: v2's attributes
        self.assertIsNone(c.watch_silence())
        self.clients["v2"].error_counts["transport"] = 2
        m.part("v3")
        self.clients["v3"].error_counts["transport"] = 1
        self.assertEqual(c.error_counts, {"transport": 3})
        self.successResultOf(m.get_network_config())
        self.clients["v3"].error_counts["transport"] = 2
        self.assertEqual(c.error_counts, {"transport": 4})      # never goes down
        self.assertEqual(c.watch_silence(), 3.0)
        self.assertEqual(c.name, "v3")
        self.successResultOf(c.close())
        self.assertTrue(self.clients["v2"].closed and self.clients["v3"].closed)
