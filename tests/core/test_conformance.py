"""Every first-party plugin and the template pass the conformance kit (one test per plugin and check)."""

from __future__ import annotations

from ssl_domains import registry
from ssl_domains.testing import parametrize_with_checks

# Loaded through the entry points, exactly as users get them; a plugin that fails to load fails here.
PLUGINS = [
    registry.load(name)
    for name, record in registry.discover().items()
    if record.distribution in ("ssl-domains", "ssl-domains-plugin-template")
]


def test_every_first_party_plugin_is_checked():
    assert {p.name for p in PLUGINS} >= {"graphmae", "dae", "tera", "ssast", "alice", "contrastive3d"}


@parametrize_with_checks(PLUGINS)
def test_conformance(plugin, check, tmp_path):
    check(plugin, tmp_path)
