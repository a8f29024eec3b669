"""Run the ssl-domains conformance kit on this plugin: one pytest test per check."""

from ssl_domains.testing import parametrize_with_checks
from ssl_domains_template.plugin import DenoisingAutoencoderPlugin


@parametrize_with_checks([DenoisingAutoencoderPlugin()])
def test_conformance(plugin, check, tmp_path):
    check(plugin, tmp_path)
