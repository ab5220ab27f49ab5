import numpy as np

from relay.engine.codecs import resample, ulaw_decode, ulaw_encode


def test_ulaw_round_trip_error_is_within_g711_quantisation():
    pcm = (np.sin(np.linspace(0, 60, 8000)) * 20000).astype(np.int16)
    back = ulaw_decode(ulaw_encode(pcm))
    err = np.abs(back.astype(np.int32) - pcm)
    # mu-law steps grow with amplitude: error stays under ~3% of the magnitude (+ small floor)
    assert np.all(err <= np.abs(pcm.astype(np.int32)) * 0.035 + 8)


def test_ulaw_known_values():
    assert ulaw_encode(np.array([0], dtype=np.int16)) == b"\xff"
    assert ulaw_encode(np.array([-32768], dtype=np.int16)) == b"\x00"
    assert ulaw_encode(np.array([32767], dtype=np.int16)) == b"\x80"
    assert ulaw_decode(b"\xff")[0] == 0


def test_resample_changes_length_by_ratio():
    pcm = np.zeros(8000, dtype=np.int16)
    assert len(resample(pcm, 8000, 16000)) == 16000
    assert resample(pcm, 8000, 8000) is pcm


def test_ulaw_table_encoder_matches_the_g711_formula_for_every_sample_value():
    from relay.engine.codecs import _ulaw_encode_exact

    every = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert ulaw_encode(every) == _ulaw_encode_exact(every)
