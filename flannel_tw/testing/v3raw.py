"""Synchronous calls to a test etcd's v3 JSON gateway, independent of the code under
test (flannel_tw.etcd.v3client): what tests read and write in the v3 keyspace."""
import base64
import json
import urllib.request


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def v3(server, path, body):
    """POST C{body} (JSON) to C{server.url + path}; the parsed answer."""
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as f:
        return json.loads(f.read())


def raw_kv(server, key):
    """The key-value at C{key} (its value decoded to text), or None."""
    kvs = v3(server, "/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
    if not kvs:
        return None
    kv = kvs[0]
    kv["value"] = base64.b64decode(kv.get("value", "")).decode()
    return kv


def raw_put(server, key, value, lease=None):
    """Put C{value} at C{key} (with C{lease}); the revision."""
    body = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return int(v3(server, "/v3/kv/put", body)["header"]["revision"])
