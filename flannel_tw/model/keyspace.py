# -*- test-case-name: tests.unit.test_keyspace -*-
"""
Which etcd keyspace holds the network config (C{--etcd-api=auto}): a pure decision
on what each keyspace answered, with no I/O (L{flannel_tw.lease.keyspace} asks etcd).

- only one keyspace holds C{<prefix>/config}: that one;
- both hold the same config (the same text, or texts that parse to the same
  L{NetworkConfig}): v3, the keyspace flanneld v0.18+ uses;
- both hold it and they differ: L{KeyspaceConflict}, never a guess, because hosts
  split across two registries hand out the same subnet twice;
- neither: C{None} (keep waiting).
"""
from dataclasses import dataclass

from flannel_tw.model.config import ConfigError, parse_config

AUTO, V2, V3 = "auto", "v2", "v3"
APIS = (AUTO, V2, V3)


class KeyspaceConflict(Exception):
    """Both keyspaces hold a config and the two differ."""

    def __init__(self, v2_where, v2_text, v3_where, v3_text):
        self.v2_where, self.v2_text = v2_where, v2_text
        self.v3_where, self.v3_text = v3_where, v3_text
        super().__init__(
            "etcd holds two different network configs: v2 %s = %r and v3 %s = %r; refusing "
            "to guess which one this cluster uses (hosts split across two registries hand "
            "out the same subnet twice): delete or correct one of them, or choose with "
            "--etcd-api=v2|v3 (FLANNELD_ETCD_API)" % (v2_where, v2_text, v3_where, v3_text))


@dataclass(frozen=True)
class KeyspaceChoice:
    api: str        # V2 or V3
    reason: str     # why, for the start-up line
    text: str       # the chosen keyspace's config text


def _same(a, b):
    if a == b:
        return True
    try:
        return parse_config(a) == parse_config(b)
    except ConfigError:
        return False


def choose_keyspace(v2_text, v3_text, v2_where="v2", v3_where="v3"):
    """
    @param v2_text: the config text in the v2 keyspace, or None when it holds none (no
        key, or an etcd without v2).
    @param v3_text: the same for the v3 keyspace.
    @param v2_where: where the v2 config lives (for messages), e.g. its URL.
    @return: a L{KeyspaceChoice}, or None when neither keyspace holds a config.
    @raise KeyspaceConflict: both hold one and they differ.
    """
    if v2_text is None and v3_text is None:
        return None
    if v3_text is None:
        return KeyspaceChoice(V2, "the network config is only in the v2 keyspace (%s)"
                              % (v2_where,), v2_text)
    if v2_text is None:
        return KeyspaceChoice(V3, "the network config is only in the v3 keyspace (%s)"
                              % (v3_where,), v3_text)
    if _same(v2_text, v3_text):
        return KeyspaceChoice(V3, "both keyspaces hold the same network config (v2 %s, "
                              "v3 %s); using v3, as flanneld v0.18+ does"
                              % (v2_where, v3_where), v3_text)
    raise KeyspaceConflict(v2_where, v2_text, v3_where, v3_text)
