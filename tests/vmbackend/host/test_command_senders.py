"""The daemon obeys mutating commands only from its configured senders (issue 20, item 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmbackend.host import config
from vmbackend.host.rules import sender_refusal


@given(
    user_id=st.one_of(st.none(), st.text(max_size=40)),
    senders=st.lists(st.text(min_size=1), min_size=1, max_size=4),
)
def test_only_a_listed_sender_is_obeyed(user_id, senders):
    refusal = sender_refusal(user_id, tuple(senders))
    assert (refusal is None) == (bool(user_id) and user_id in senders)


def test_the_default_sender_is_the_shops_user_only():
    cfg = config.load(env={"WARREN_HOST_ID": "h1"})
    assert cfg.command_senders == ("warren-shop",)
    assert sender_refusal("guest", cfg.command_senders)
    assert sender_refusal("warren-host-h2", cfg.command_senders)


def test_senders_are_configured_and_checked():
    cfg = config.load(env={"WARREN_HOST_ID": "h1", "WARREN_COMMAND_SENDERS": "warren-shop, ops"})
    assert cfg.command_senders == ("warren-shop", "ops")
    with pytest.raises(config.ConfigError):
        config.load(env={"WARREN_HOST_ID": "h1", "WARREN_COMMAND_SENDERS": "a b"})
