"""Transfer destinations (relay.transfer): what a call may be transferred to, and the one
run-time check both brains' transfers pass."""

from __future__ import annotations

import pytest

from relay.agent_config import AgentConfig
from relay.transfer import (
    CONTROL,
    INVALID_NUMBER,
    PREMIUM_RATE,
    SIP_FORM,
    SIP_NOT_PUBLIC,
    TOO_LONG,
    InvalidDestination,
    TransferRefused,
    allowed_destinations,
    check_transfer,
    destination,
)


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("+61255509999", "+61255509999"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("sip:alice@example.com", "sip:alice@example.com"),
        (
            "SIP:Alice@Sip.Example.COM:5061;transport=TLS",
            "sip:Alice@sip.example.com:5061;transport=tls",
        ),
        ("sip:+14155550123@pbx.example.net", "sip:+14155550123@pbx.example.net"),
        ("sip:desk@8.8.8.8", "sip:desk@8.8.8.8"),
        ("sip:desk@[2001:4860:4860::8888]", "sip:desk@[2001:4860:4860::8888]"),
    ],
)
def test_valid_destinations_are_normalised(given, normalised):
    assert destination(given) == normalised


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("14155550123", INVALID_NUMBER),  # E.164 starts with +
        ("+1415555", INVALID_NUMBER),
        ("+14155550123;ext=12", INVALID_NUMBER),
        ("anywhere", INVALID_NUMBER),
        ("", INVALID_NUMBER),
        ("+19005550000", PREMIUM_RATE),  # a US 900 number
        ("+14155550123\n", CONTROL),
        ("sip:a@example.com\r\nVia: evil", CONTROL),
        ("sip:a@example.com\x00", CONTROL),
        ("+" + "1" * 300, TOO_LONG),
        ("sip:example.com", SIP_FORM),  # no user
        ("sip:a b@example.com", SIP_FORM),
        ("sip:a@example.com?Subject=x", SIP_FORM),  # headers are not ours to set
        ("sip:a@example.com;maddr=10.0.0.1", SIP_FORM),  # nor a route elsewhere
        ("sip:a@example.com:70000", SIP_FORM),
        ("sips:a@example.com", INVALID_NUMBER),
        ("sip:a@127.0.0.1", SIP_NOT_PUBLIC),
        ("sip:a@10.1.2.3", SIP_NOT_PUBLIC),
        ("sip:a@192.168.0.10:5060", SIP_NOT_PUBLIC),
        ("sip:a@169.254.169.254", SIP_NOT_PUBLIC),  # cloud metadata
        ("sip:a@100.64.0.1", SIP_NOT_PUBLIC),  # CGNAT
        ("sip:a@[::1]", SIP_NOT_PUBLIC),
        ("sip:a@[::ffff:10.0.0.1]", SIP_NOT_PUBLIC),
        ("sip:a@2130706433", SIP_NOT_PUBLIC),  # 127.0.0.1 spelled as one number
        ("sip:a@0x7f.1", SIP_NOT_PUBLIC),
        ("sip:a@localhost", SIP_NOT_PUBLIC),
        ("sip:a@pbx.internal", SIP_NOT_PUBLIC),
        ("sip:a@printer.local", SIP_NOT_PUBLIC),
        ("sip:a@pbx", SIP_NOT_PUBLIC),  # one label: a name inside someone's network
        ("sip:a@-bad-.example.com", SIP_FORM),
        ("sip:a@example..com", SIP_FORM),
    ],
)
def test_invalid_destinations_are_refused_with_the_reason(given, message):
    with pytest.raises(InvalidDestination) as caught:
        destination(given)
    assert str(caught.value) == message


def test_a_transfer_goes_only_to_a_listed_destination():
    allowed = ["+61255509999", "sip:desk@example.com"]
    assert check_transfer("+61 2 5550 9999", allowed) == "+61255509999"
    assert check_transfer("sip:desk@EXAMPLE.com", allowed) == "sip:desk@example.com"
    with pytest.raises(TransferRefused) as caught:
        check_transfer("+61255501234", allowed)
    assert caught.value.reason == "destination_not_allowed"
    assert caught.value.data() == {"to": "+61255501234", "reason": "destination_not_allowed"}


@pytest.mark.parametrize("allowed", [[], ["not a number"], ["sip:a@127.0.0.1"]])
def test_an_agent_with_no_acceptable_destination_transfers_nowhere(allowed):
    # Entries stored before destinations were checked allow nothing.
    with pytest.raises(TransferRefused) as caught:
        check_transfer("+61255509999", allowed)
    assert caught.value.reason == "no_transfer_destinations"


def test_a_refused_destination_is_logged_bounded_and_printable():
    with pytest.raises(TransferRefused) as caught:
        check_transfer("\x00" + "9" * 5000, ["+61255509999"])
    refused = caught.value
    assert refused.reason == "invalid_destination"
    shown = refused.data()["to"]
    assert shown.startswith("?999") and shown.endswith("...") and len(shown) == 123
    assert "\x00" not in refused.log_message()


def test_each_brain_has_its_own_list():
    agent = AgentConfig(
        transfer_destinations=["+61255509999"],
        tools=[{"name": "transfer_call", "destinations": ["+61255501999"]}],
    )
    assert allowed_destinations("webhook", agent) == ("+61255509999",)
    assert allowed_destinations("hosted", agent) == ("+61255501999",)
    assert allowed_destinations("hosted", AgentConfig(transfer_destinations=["+6125550999"])) == ()
    assert allowed_destinations("webhook", AgentConfig()) == ()
