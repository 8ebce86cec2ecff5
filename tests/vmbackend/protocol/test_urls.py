"""The URLs a host reports (instance.ready) are checked in full (issue 20: a port of 99999 was
stored and every later order page answered 500): by hand for each rule, and with Hypothesis for
what the rule promises to whatever shows a stored URL."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmbackend.protocol import messages
from vmbackend.protocol.urls import AMQP_SCHEMES, MANAGEMENT_SCHEMES, BadURL, check_url, is_valid


def _ready(management_url: str, amqp_url: str) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "type": "instance.ready",
            "host_id": "h1",
            "seq": 1,
            "instance_id": str(uuid.uuid4()),
            "management_url": management_url,
            "amqp_url": amqp_url,
        }
    ).encode()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:15672/",
        "https://mq.example.com:443/",
        "http://[2001:db8::1]:15672/",
        "http://vm-1.example.com/",
        "http://localhost",
    ],
)
def test_the_urls_hosts_send_pass(url):
    assert check_url(url, MANAGEMENT_SCHEMES) == url


@pytest.mark.parametrize(
    "url",
    [
        "amqp://warren-abc123@127.0.0.1:5672/",
        "amqps://admin@vm-1.example.com:5671/",
        "amqp://127.0.0.1:5672/%2F",
    ],
)
def test_amqp_urls_may_name_the_admin(url):
    assert check_url(url, AMQP_SCHEMES, user=True) == url


@pytest.mark.parametrize(
    ("url", "user", "why"),
    [
        ("http://127.0.0.1:99999/", False, "port"),
        ("http://127.0.0.1:0/", False, "port"),
        ("amqp://u@127.0.0.1:65536/", True, "port"),
        ("http://u@127.0.0.1:1/", False, "user info"),
        ("amqp://u:secret@127.0.0.1:1/", True, "bad user name"),
        ("http://999.1.1.1:1/", False, "IPv4"),
        ("http://[1::2::3]:1/", False, "IPv6"),
        ("http://-bad-.example:1/", False, "DNS name"),
        ("http://a..b:1/", False, "DNS name"),
        ("http://" + "a" * 64 + ".example/", False, "DNS name"),
        ("javascript:alert(1)", False, "not a URL"),
        ("http://x/?q=1", False, "not a URL"),
        ("http://x/#f", False, "not a URL"),
        ("http://x/<script>", False, "not a URL"),
        ("http://x/ a", False, "not a URL"),
        ("ftp://x/", False, "scheme"),
        ("HTTP://x/", False, "not a URL"),
        ("", False, "non-empty"),
        ("http://x/" + "a" * 500, False, "at most 500"),
    ],
)
def test_anything_else_is_refused_with_the_part_that_is_wrong(url, user, why):
    schemes = AMQP_SCHEMES if url.startswith("amqp") else MANAGEMENT_SCHEMES
    with pytest.raises(BadURL, match=why):
        check_url(url, schemes, user=user)
    assert not is_valid(url, schemes, user=user)


def test_an_event_with_a_bad_port_is_malformed():
    with pytest.raises(messages.MalformedEvent, match="amqp_url the port"):
        messages.parse_event(_ready("http://127.0.0.1:1/", "amqp://u@127.0.0.1:99999/"))


@given(st.text(max_size=80), st.booleans())
def test_any_string_is_either_refused_or_safe_to_take_apart(text, user):
    """What passes parses with urlsplit without an error (the page's `.port` raised), has a
    port in range, an allowed scheme, no password, and nothing an HTML attribute would need
    escaping for; whatever else is refused with BadURL, never another exception."""
    for schemes in (MANAGEMENT_SCHEMES, AMQP_SCHEMES):
        for candidate in (text, f"{schemes[0]}://{text}", f"{schemes[1]}://u@{text}"):
            try:
                check_url(candidate, schemes, user=user)
            except BadURL:
                continue
            parts = urlsplit(candidate)
            assert parts.scheme in schemes
            assert parts.port is None or 1 <= parts.port <= 65535
            assert parts.password is None
            assert (parts.username is None) or user
            assert not parts.query and not parts.fragment
            assert not set(candidate) & set("<>\"' \\`")


@given(
    st.sampled_from(AMQP_SCHEMES),
    st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.integers(min_value=-10, max_value=200_000),
)
def test_a_port_passes_exactly_when_it_is_1_to_65535(scheme, host, port):
    url = f"{scheme}://admin@{host}:{port}/"
    assert is_valid(url, AMQP_SCHEMES, user=True) == (1 <= port <= 65535)


@given(st.text(max_size=60), st.text(max_size=60))
def test_an_instance_ready_the_parser_takes_has_urls_a_page_can_take_apart(host_a, host_b):
    body = _ready(f"http://{host_a}/", f"amqp://admin@{host_b}:5672/")
    try:
        event = messages.parse_event(body)
    except messages.MalformedEvent:
        return
    for url in (event.management_url, event.amqp_url):
        parts = urlsplit(url)
        assert parts.port is None or 1 <= parts.port <= 65535
        assert parts.password is None and parts.hostname
