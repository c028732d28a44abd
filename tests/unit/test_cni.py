"""flannel_tw.tools.cni: delegate config generation, environment checks and error JSON

The unit tests (ConfigTests, ErrorTests); the whole description is in tests/integration/test_cni.py."""

import io
import json
import os
import stat

from twisted.trial import unittest

from flannel_tw.tools import cni
from flannel_tw.testing.cni_fixtures import SUBNET_ENV, _write


class ConfigTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env_path = _write(os.path.join(self.dir, "subnet.env"), SUBNET_ENV)

    def conf(self, **extra):
        c = {"cniVersion": "1.0.0", "name": "flnet", "type": "flannel",
             "subnetFile": self.env_path}
        c.update(extra)
        return cni.parse_netconf(json.dumps(c))

    def test_default_delegate_is_flannels(self):
        conf = self.conf()
        d = cni.delegate_config(conf, cni.load_subnet_env(conf["subnetFile"]))
        self.assertEqual(d, {
            "name": "flnet", "type": "bridge", "cniVersion": "1.0.0",
            "ipMasq": True, "mtu": 1472, "isGateway": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.74.0/24"}]],
                     "routes": [{"dst": "10.1.0.0/16"}]}})

    def test_user_settings_are_kept(self):
        conf = self.conf(delegate={"type": "bridge", "ipMasq": False, "mtu": 1400,
                                   "isGateway": False, "bridge": "cni1"},
                         ipam={"dataDir": "/tmp/x", "routes": [{"dst": "0.0.0.0/0"}]},
                         runtimeConfig={"portMappings": []})
        d = cni.delegate_config(conf, cni.load_subnet_env(conf["subnetFile"]))
        self.assertEqual((d["ipMasq"], d["mtu"], d["isGateway"], d["bridge"]),
                         (False, 1400, False, "cni1"))
        self.assertEqual(d["ipam"]["dataDir"], "/tmp/x")
        self.assertEqual(d["ipam"]["routes"], [{"dst": "0.0.0.0/0"}, {"dst": "10.1.0.0/16"}])
        self.assertEqual(d["runtimeConfig"], {"portMappings": []})

    def test_flannel_ipmasq_turns_bridge_masquerade_off(self):
        _write(self.env_path, SUBNET_ENV.replace("IPMASQ=false", "IPMASQ=true"))
        conf = self.conf()
        self.assertFalse(cni.delegate_config(conf, cni.load_subnet_env(self.env_path))["ipMasq"])

    def test_non_bridge_delegate_gets_no_isgateway(self):
        conf = self.conf(delegate={"type": "ipvlan"})
        self.assertNotIn("isGateway", cni.delegate_config(conf, cni.load_subnet_env(self.env_path)))

    def test_ipv6_subnet(self):
        _write(self.env_path, SUBNET_ENV + "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
               "FLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\n")
        ipam = cni.delegate_ipam({}, cni.load_subnet_env(self.env_path))
        self.assertEqual(ipam["ranges"], [[{"subnet": "10.1.74.0/24"}],
                                          [{"subnet": "2001:cafe:42:1::/64"}]])
        self.assertEqual(ipam["routes"], [{"dst": "10.1.0.0/16"}, {"dst": "2001:cafe:42::/56"}])

    def test_defaults(self):
        conf = cni.parse_netconf(b'{"cniVersion": "0.3.1", "name": "n"}')
        self.assertEqual(conf["subnetFile"], "/run/flannel/subnet.env")
        self.assertEqual(conf["dataDir"], "/var/lib/cni/flannel")
        self.assertEqual(conf["delegate"], {})


class ErrorTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x",
                    "CNI_IFNAME": "eth0", "CNI_PATH": self.dir}
        self.conf = {"cniVersion": "1.0.0", "name": "n", "type": "flannel",
                     "subnetFile": os.path.join(self.dir, "subnet.env"),
                     "dataDir": os.path.join(self.dir, "data")}

    def call(self, env=None, conf=None, raw=None):
        out = io.StringIO()
        stdin = io.BytesIO(raw if raw is not None else json.dumps(conf or self.conf).encode())
        code = cni.main([], environ=env or self.env, stdin=stdin, stdout=out,
                        stderr=io.StringIO())
        return code, json.loads(out.getvalue()) if out.getvalue() else None

    def assertError(self, result, code, version="1.0.0"):
        status, body = result
        self.assertEqual(status, 1)
        self.assertEqual(set(body) - {"details"}, {"cniVersion", "code", "msg"})
        self.assertEqual((body["code"], body["cniVersion"]), (code, version), body)
        return body

    def test_missing_subnet_env_is_try_again_later(self):
        body = self.assertError(self.call(), 11)
        self.assertIn("subnet.env", body["msg"])

    def test_bad_json(self):
        self.assertError(self.call(raw=b"{nope"), 6)
        self.assertError(self.call(raw=b"[1]"), 6)

    def test_unsupported_version(self):
        self.assertError(self.call(conf=dict(self.conf, cniVersion="9.9.9")), 1)

    def test_wrong_field_type(self):
        self.assertError(self.call(conf=dict(self.conf, delegate="bridge")), 7)

    def test_missing_and_bad_environment(self):
        for drop in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
            env = dict(self.env)
            del env[drop]
            body = self.assertError(self.call(env=env), 4)
            self.assertIn(drop, body["msg"])
        self.assertError(self.call(env=dict(self.env, CNI_COMMAND="FROB")), 4)
        self.assertError(self.call(env=dict(self.env, CNI_CONTAINERID="../../etc")), 4)
        self.assertError(self.call(env=dict(self.env, CNI_IFNAME="a" * 16)), 4)

    def test_version(self):
        code, body = self.call(env={"CNI_COMMAND": "VERSION"}, raw=b'{"cniVersion":"0.4.0"}')
        self.assertEqual(code, 0)
        self.assertEqual(body["cniVersion"], "1.0.0")
        self.assertIn("0.3.1", body["supportedVersions"])
        self.assertIn("1.0.0", body["supportedVersions"])

    def test_no_command_prints_about(self):
        err = io.StringIO()
        self.assertEqual(cni.main([], environ={}, stdin=io.BytesIO(), stdout=io.StringIO(),
                                  stderr=err), 0)
        self.assertIn("CNI flannel plugin", err.getvalue())

    def test_del_without_saved_config_succeeds(self):
        self.assertEqual(self.call(env=dict(self.env, CNI_COMMAND="DEL")), (0, None))

    def test_delegate_not_found(self):
        _write(self.conf["subnetFile"], SUBNET_ENV)
        body = self.assertError(self.call(), 100)
        self.assertIn("bridge", body["msg"])

    def fake_bridge(self, script):
        return _write(os.path.join(self.dir, "bridge"), "#!/bin/sh\n" + script, 0o755)

    def test_delegate_add_del_with_fake_plugin(self):
        """The delegate gets our environment, CNI_COMMAND and the config on stdin."""
        _write(self.conf["subnetFile"], SUBNET_ENV)
        log = os.path.join(self.dir, "calls")
        self.fake_bridge('echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> %s\n'
                         'cat > %s.$CNI_COMMAND\n'
                         '[ "$CNI_COMMAND" = ADD ] && echo \'{"cniVersion":"1.0.0",'
                         '"ips":[{"address":"10.1.74.2/24"}]}\'\nexit 0\n' % (log, log))
        code, result = self.call()
        self.assertEqual(code, 0)
        self.assertEqual(result["ips"][0]["address"], "10.1.74.2/24")
        with open(log + ".ADD") as f:
            sent = json.load(f)
        self.assertEqual(sent["ipam"]["ranges"], [[{"subnet": "10.1.74.0/24"}]])
        saved = os.path.join(self.dir, "data", "c1")
        self.assertEqual(stat.S_IMODE(os.stat(saved).st_mode), 0o600)
        with open(saved) as f:
            self.assertEqual(json.load(f), sent)
        # DEL uses the saved config even when subnet.env is gone, then removes it
        os.unlink(self.conf["subnetFile"])
        self.assertEqual(self.call(env=dict(self.env, CNI_COMMAND="DEL")), (0, None))
        with open(log + ".DEL") as f:
            self.assertEqual(json.load(f), sent)
        self.assertFalse(os.path.exists(saved))
        with open(log) as f:
            self.assertEqual(f.read().split("\n")[:2], ["ADD c1 eth0", "DEL c1 eth0"])

    def test_delegate_error_is_passed_on(self):
        _write(self.conf["subnetFile"], SUBNET_ENV)
        self.fake_bridge('echo \'{"cniVersion":"1.0.0","code":7,"msg":"bad bridge",'
                         '"details":"d"}\'\nexit 1\n')
        body = self.assertError(self.call(), 7)
        self.assertEqual((body["msg"], body["details"]), ("failed to delegate add: bad bridge", "d"))

    def test_delegate_crash_without_cni_error(self):
        _write(self.conf["subnetFile"], SUBNET_ENV)
        self.fake_bridge("echo oops >&2\nexit 3\n")
        body = self.assertError(self.call(), 100)
        self.assertIn("oops", body["details"])

    def test_failed_del_keeps_the_saved_config(self):
        os.makedirs(self.conf["dataDir"])
        _write(os.path.join(self.conf["dataDir"], "c1"), '{"type": "bridge", "name": "n"}')
        self.fake_bridge("exit 1\n")
        self.assertError(self.call(env=dict(self.env, CNI_COMMAND="DEL")), 100)
        self.assertTrue(os.path.exists(os.path.join(self.conf["dataDir"], "c1")))

    def test_check(self):
        check = dict(self.env, CNI_COMMAND="CHECK")
        self.assertError(self.call(env=check), 3)
        self.assertError(self.call(env=check, conf=dict(self.conf, cniVersion="0.3.1")),
                         1, "0.3.1")
        os.makedirs(self.conf["dataDir"])
        _write(os.path.join(self.conf["dataDir"], "c1"), '{"type": "bridge", "name": "n"}')
        self.assertError(self.call(env=check), 11)      # no subnet.env
        _write(self.conf["subnetFile"], SUBNET_ENV)
        prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.74.2/24"}]}
        self.assertEqual(self.call(env=check, conf=dict(self.conf, prevResult=prev)), (0, None))
        # the lease moved: the container's address is stale
        _write(self.conf["subnetFile"], SUBNET_ENV.replace("10.1.74.1", "10.1.75.1"))
        body = self.assertError(self.call(env=check, conf=dict(self.conf, prevResult=prev)), 100)
        self.assertIn("10.1.74.2", body["msg"])
