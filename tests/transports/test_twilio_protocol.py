import base64
import json

import pytest

from relay.transports import twilio_protocol as tp


def test_parses_a_real_start_frame():
    frame = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound"],
            "customParameters": {"callId": "call_x"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    ev = tp.parse(json.dumps(frame))
    assert ev == tp.Start("MZ1", "CA1", {"callId": "call_x"}, "audio/x-mulaw", 8000)


def test_media_dtmf_mark_stop():
    payload = base64.b64encode(b"\xff" * 160).decode()
    media = {"event": "media", "media": {"track": "inbound", "timestamp": "20", "payload": payload}}
    assert tp.parse(json.dumps(media)) == tp.Media(b"\xff" * 160, 20)
    assert tp.parse('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}') == tp.Dtmf("5")
    assert tp.parse('{"event":"mark","mark":{"name":"m1"}}') == tp.Mark("m1")
    assert tp.parse('{"event":"stop","stop":{}}') == tp.Stop()


@pytest.mark.parametrize(
    "frame",
    [
        "nope",
        "[]",
        '{"event":"media","media":{"payload":"@@"}}',
        '{"event":"dtmf","dtmf":{"digit":"x"}}',
        '{"event":"what"}',
        '{"event":"start","start":5}',
    ],
)
def test_malformed_frames_raise_protocol_error(frame):
    with pytest.raises(tp.ProtocolError):
        tp.parse(frame)


@pytest.mark.parametrize(
    "fmt",
    [{"sampleRate": "fast"}, {"sampleRate": [8000]}, {"sampleRate": -1}, {"sampleRate": True}],
)
def test_a_malformed_start_frame_raises_protocol_error(fmt):
    frame = {"event": "start", "start": {"streamSid": "MZ1", "mediaFormat": fmt}}
    with pytest.raises(tp.ProtocolError):
        tp.parse(json.dumps(frame))


def test_a_frame_nested_too_deep_raises_protocol_error():
    with pytest.raises(tp.ProtocolError):
        tp.parse("[" * 100_000 + "]" * 100_000)


def test_outbound_frames():
    assert json.loads(tp.media("MZ1", b"\x00\x01")) == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": "AAE="},
    }
    assert json.loads(tp.clear("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
    assert json.loads(tp.mark("MZ1", "a")) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "a"},
    }
