import numpy as np
import pytest
import soundfile as sf

from auditoryhum import audio
from auditoryhum.backends import features
from tests.conftest import write_bad_files


@pytest.mark.parametrize("rate, channels", [(8000, 1), (11025, 2), (44100, 1), (48000, 6), (16000, 1)])
def test_any_rate_and_channel_count_becomes_mono_16k(tmp_path, rate, channels):
    t = np.arange(int(rate * 1.5)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([tone * (c + 1) / channels for c in range(channels)], axis=1)
    path = tmp_path / "tone.flac"
    sf.write(path, data, rate)
    clip = audio.load(path, 16000)
    assert clip.sample_rate == 16000 and clip.source_rate == rate and clip.channels == channels
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(clip.duration_s - 1.5) < 0.01
    # the tone survives resampling at its frequency: a proper resampler, not a naive decimation
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert abs(np.argmax(spectrum) * 16000 / len(clip.samples) - 440) < 2


def test_each_kind_of_bad_file_has_a_reason(tmp_path):
    expected = write_bad_files(tmp_path)
    limits = audio.AudioLimits(max_duration_s=10)
    for name, words in expected.items():
        with pytest.raises(audio.AudioError, match=words):
            audio.load(tmp_path / name, 16000, limits)
    big = tmp_path / "big.wav"
    sf.write(big, np.random.default_rng(0).normal(0, 0.1, 16000 * 4).astype(np.float32), 16000)
    with pytest.raises(audio.AudioError, match="too large"):
        audio.load(big, 16000, audio.AudioLimits(max_file_bytes=10_000))
    with pytest.raises(audio.AudioError, match="cannot open"):
        audio.load(tmp_path / "missing.wav", 16000)


def test_log_mel_matches_the_torch_stft_reference():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(0, 0.1, 16000 * 3).astype(np.float32)
    window = torch.hann_window(features.WIN_LENGTH)
    spec = torch.stft(torch.from_numpy(x), features.N_FFT, features.HOP_LENGTH, features.WIN_LENGTH, window,
                      center=False, return_complex=True).abs().T.numpy()
    reference = np.log(spec @ features.mel_filterbank() + 1e-6)
    np.testing.assert_allclose(features.log_mel(x), reference, atol=1e-4)
    patches = features.patches(x)
    assert patches.shape == (1 + (len(reference) - 96) // 48, 1, 96, 64)
    np.testing.assert_allclose(patches[1, 0], reference[48:144], atol=1e-4)


def test_mel_filterbank_covers_125_to_7500_hz():
    fb = features.mel_filterbank()
    freqs = np.linspace(0, 8000, fb.shape[0])
    active = freqs[fb.sum(axis=1) > 0]
    assert fb.shape == (257, 64) and 125 <= active.min() < 160 and 7400 < active.max() <= 7500


def test_bytes_decode_like_files(tmp_path, traffic_clips):
    expected = write_bad_files(tmp_path)
    limits = audio.AudioLimits(max_duration_s=10)
    for name, words in expected.items():
        with pytest.raises(audio.AudioError, match=words):
            audio.load_bytes((tmp_path / name).read_bytes(), 16000, limits)
    with pytest.raises(audio.AudioError, match="too large"):
        audio.load_bytes(traffic_clips[0].read_bytes(), 16000, audio.AudioLimits(max_file_bytes=1000))
    from_file = audio.load(traffic_clips[0], 16000)
    from_bytes = audio.load_bytes(traffic_clips[0].read_bytes(), 16000)
    assert from_bytes.source_rate == from_file.source_rate and from_bytes.channels == from_file.channels
    np.testing.assert_array_equal(from_bytes.samples, from_file.samples)
