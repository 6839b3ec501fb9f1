"""The origins' own rules, on their own: what counts as another origin's request, and when
the browser came over HTTPS, also behind a TLS proxy (which this server sees as HTTP)."""

from access.origins import _secure, from_elsewhere, host_label


def test_another_origin_is_told_by_its_host_whatever_the_scheme_the_server_sees():
    own = "s1-abcdefghij.apps.example.com"
    assert not from_elsewhere({"host": own, "origin": f"https://{own}"})
    assert not from_elsewhere({"host": own})  # no Origin: not a page's cross-origin request
    assert from_elsewhere({"host": own, "origin": "https://s2-abcdefghij.apps.example.com"})
    assert from_elsewhere({"host": own, "origin": "https://gpu.example.com"})
    assert from_elsewhere({"host": own, "origin": "null"})  # a sandboxed frame


def test_https_is_seen_here_or_through_a_trusted_tls_proxy(settings):
    settings.SECURE_PROXY_SSL_HEADER = None
    assert _secure({"scheme": "https"}, {})
    assert not _secure({"scheme": "http"}, {"x-forwarded-proto": "https"})  # not trusted
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert _secure({"scheme": "http"}, {"x-forwarded-proto": "https"})
    assert not _secure({"scheme": "http"}, {"x-forwarded-proto": "http"})


def test_only_service_and_notebook_labels_under_the_apps_domain_are_origins(settings):
    settings.APPS_DOMAIN = "apps.example.com"
    assert host_label("s12-abcdefghij.apps.example.com:8443") == ("s12", "abcdefghij")
    assert host_label("n7-abcdefghij.apps.example.com") == ("n7", "abcdefghij")
    assert host_label("x7-abcdefghij.apps.example.com") is None
    assert host_label("s12-abcdefghij.example.com") is None
    assert host_label("s12-short.apps.example.com") is None
