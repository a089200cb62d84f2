"""Audio files in, fixed-length mono float32 waveforms out (soundfile + scipy resample_poly)."""

from __future__ import annotations

import re
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


class UnreadableAudio(Exception):
    """A file inside a good dataset that cannot be used (corrupt, empty, not audio); it is skipped."""


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis; returns float32."""
    if src_rate == dst_rate:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly  # 1.4 s to import: only a run that resamples pays it

    g = gcd(int(src_rate), int(dst_rate))
    up, down = dst_rate // g, src_rate // g
    return resample_poly(audio, up, down, axis=-1, window=_lowpass(up, down)).astype(np.float32, copy=False)


@lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    # resample_poly's own default design (Kaiser beta 5, 10 taps per phase), built once
    # instead of per call: designing it costs more than filtering a short word.
    from scipy.signal import firwin

    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.setflags(write=False)
    return taps


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Crop the end off, or zero-pad the end of, a ``(N,)`` waveform to ``n_samples``."""
    if len(audio) >= n_samples:
        return audio[:n_samples]
    return np.pad(audio, (0, n_samples - len(audio)))


def load_audio(path: Path, sample_rate: int, n_samples: int) -> np.ndarray:
    """``(n_samples,)`` float32 mono waveform of ``path`` at ``sample_rate``.

    Reads only the part that survives cropping (plus a little margin for the resampling
    filter), so long recordings cost no more than short ones. Raises :class:`UnreadableAudio`.
    """
    try:
        if Path(path).stat().st_size == 0:
            raise UnreadableAudio("zero-length file")
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, f.frames
            want = int(np.ceil(n_samples * rate / sample_rate)) + 64
            data = f.read(frames=min(frames, want) if frames > 0 else -1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UnreadableAudio(f"unreadable audio ({_first_line(exc)})") from None
    if data.size == 0:
        raise UnreadableAudio("no audio samples")
    mono = data.mean(axis=1)  # (N,) mixdown of all channels
    if not np.all(np.isfinite(mono)):
        raise UnreadableAudio("audio holds NaN or infinite samples")
    return fit_length(resample(mono, rate, sample_rate), n_samples)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # libsndfile names the file again; the skip report already does.
    return re.sub(r"^Error opening '.*?': ", "", text.splitlines()[0])
