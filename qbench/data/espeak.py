"""espeak-ng through ctypes, run in a fresh worker process per dataset build.

espeak-ng keeps synthesis state in C statics that no API call resets (the pitch-flutter index,
the glottal wave phase), so the same word and voice come out slightly different depending on
everything synthesised before in that process. A dataset is only reproducible if every build
starts from a freshly loaded engine and asks for the same utterances in the same order, so
:func:`synthesise` runs the engine in a new process each time.

This file also is that worker (``python -c 'runpy.run_path(this file)'``): it imports only the
standard library, NumPy and espeakng_loader, so the worker neither pays for nor depends on qbench.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import struct
import subprocess
import sys

import numpy as np

ESPEAK_RATE = 22050  # Hz, espeak-ng's native output rate

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LENGTH = struct.Struct("<q")


@dataclasses.dataclass(frozen=True, order=True)
class Voice:
    """One espeak-ng voice setting: variant (``"en+m3"``), pitch 0-99, pitch range 0-99, words/min."""

    name: str
    pitch: int
    range: int
    rate: int


class SynthesisError(RuntimeError):
    """The espeak-ng engine could not be loaded or could not speak a request."""


class Espeak:
    """In-process espeak-ng: ``say(text, voice)`` -> ``(N,)`` int16 at 22050 Hz. One per process."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise SynthesisError("the synthetic speech datasets need espeakng-loader (pip install espeakng-loader)")
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise SynthesisError(f"espeak-ng failed to initialise (returned {rate}, expected {ESPEAK_RATE} Hz)")
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # noise sources of the Klatt voices
            lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept referenced: espeak holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, wav, n: int, _events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: continue synthesis

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """``(N,)`` int16 waveform at :data:`ESPEAK_RATE`, leading/trailing pauses included."""
        if voice.name != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SynthesisError(f"espeak-ng has no voice {voice.name!r}")
            self._voice = voice.name
        for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.range),
                             (_PARAM_VOLUME, 100)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        data = text.encode() + b"\0"
        status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise SynthesisError(f"espeak-ng failed to synthesise {text!r} (status {status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)


def synthesise(requests: list[tuple[str, Voice]]) -> list[np.ndarray]:
    """``(N_i,)`` int16 waveforms at 22050 Hz of ``requests``, spoken in order by a fresh engine."""
    if not requests:
        return []
    payload = json.dumps([[text, *dataclasses.astuple(voice)] for text, voice in requests]).encode()
    # Drop the working directory from the worker's path: a stray json.py there must not shadow.
    runner = "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; " \
             "import runpy; runpy.run_path(sys.argv[1], run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", runner, __file__], input=payload, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        raise SynthesisError(f"espeak-ng worker failed: {lines[-1]}")
    out, pos = [], 0
    try:
        for _ in requests:
            (n,) = _LENGTH.unpack_from(proc.stdout, pos)
            pos += _LENGTH.size
            out.append(np.frombuffer(proc.stdout, dtype=np.int16, count=n, offset=pos))
            pos += 2 * n
    except (struct.error, ValueError):
        pos = -1
    if pos != len(proc.stdout):  # something else wrote to the worker's stdout
        raise SynthesisError(f"espeak-ng worker output ({len(proc.stdout)} bytes) is not {len(requests)} clips")
    return out


def _serve() -> int:
    """Worker: JSON ``[[text, name, pitch, range, rate], ...]`` on stdin -> length-prefixed int16 on stdout."""
    try:
        engine = Espeak()
        requests = json.loads(sys.stdin.buffer.read())
        sink = sys.stdout.buffer
        for text, *voice in requests:
            audio = engine.say(text, Voice(*voice)).astype("<i2", copy=False)
            sink.write(_LENGTH.pack(len(audio)))
            sink.write(audio.tobytes())
        sink.flush()
    except SynthesisError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
