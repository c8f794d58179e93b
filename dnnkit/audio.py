"""Audio helpers shared by the suite's sound folders (suite/keywords, suite/instruments).

Checks that installed renderers and sources are there (through `datasets.require`, before any work),
runs renderers (TTS engines, fluidsynth) as subprocesses in a thread pool, reads their wavs
(soundfile) at 16 kHz (scipy's polyphase resampler), trims and fits clips to a fixed length,
augments them (random gain, placement, spectral tilt, exponential-decay reverb, white/pink/brown noise
at a given SNR), and computes log-mel and MFCC features with nnAudio (PyPI `nnaudio`, torch-based).

Randomness is per clip: callers pass a `numpy.random.Generator` seeded from the clip's identity
(e.g. `np.random.default_rng([seed, voice, word])`), so results do not depend on how work is split
over threads. Features are computed in fixed-size chunks with ONE torch thread per chunk, so they
are bit-identical whatever the machine's core count.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from math import gcd
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from dnnkit import datasets

SR = 16000  # every clip is mono float32 at 16 kHz
FRAME = dict(n_fft=512, win_length=480, hop_length=160)  # 30 ms Hann window, 10 ms hop: 101 frames / s
CHUNK = 32  # clips per feature batch (bigger batches are no faster and take more memory)
NOISE_KINDS = ("white", "pink", "brown")

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- sources ---------------------------------------------
def executable(name: str, install: str) -> Path:
    """The path of an installed program, else FileNotFoundError (via datasets.require) naming it and `install`."""
    return datasets.require(Path(shutil.which(name) or f"/usr/bin/{name}"), install)


def python_package(name: str, install: str) -> Path:
    """The folder of an importable package (found without importing it), else FileNotFoundError naming it."""
    spec = importlib.util.find_spec(name)
    folder = Path(spec.origin).parent if spec and spec.origin else Path(f"<site-packages>/{name}")
    return datasets.require(folder, install)


def workers(limit: int = 8) -> int:
    """Threads for subprocess rendering: a few per core (the renderers are short single-threaded processes)."""
    return max(2, min(limit, 4 * (os.cpu_count() or 1)))


def parallel_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """`[fn(item) for item in items]`, computed in a thread pool, results in input order."""
    with ThreadPoolExecutor(threads or workers()) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------- waveforms -------------------------------------------
def resample(x: np.ndarray, sr: int, target: int = SR) -> np.ndarray:
    """`x` (sampled at `sr`) at `target` Hz, by scipy's polyphase filter; float32."""
    if sr != target:
        from scipy.signal import resample_poly

        g = gcd(sr, target)
        x = resample_poly(x, target // g, sr // g)
    return np.asarray(x, dtype=np.float32)


def read_wav(source: str | Path | bytes) -> np.ndarray:
    """A wav file (path or bytes) as mono float32 at SR (channels averaged)."""
    import soundfile  # prepare-time dependency (PyPI soundfile)

    x, sr = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32",
                           always_2d=True)
    return resample(x.mean(axis=1), sr)


def read_slices(path: str | Path, starts: Sequence[int], length: int) -> list[np.ndarray]:
    """Mono float32 slices [start, start + length) of a wav recorded at SR, read one at a time (a long
    render is never held in memory whole); a slice past the end is shorter."""
    import soundfile  # prepare-time dependency (PyPI soundfile)

    out = []
    with soundfile.SoundFile(path) as f:
        if f.samplerate != SR:
            raise ValueError(f"{path}: sampled at {f.samplerate} Hz, expected {SR}")
        for start in starts:
            f.seek(min(int(start), f.frames))
            out.append(f.read(length, dtype="float32", always_2d=True).mean(axis=1))
    return out


def segments(x: np.ndarray, min_gap: float = 0.25, rel: float = 0.01, sr: int = SR) -> list[tuple[int, int]]:
    """Sample ranges of the sounding parts of `x`, split at silences (10 ms frames whose peak is below
    `rel` times the clip's peak) of at least `min_gap` seconds."""
    hop = sr // 100
    n = len(x) // hop
    peaks = np.abs(x[: n * hop]).reshape(n, hop).max(axis=1) if n else np.zeros(0)
    loud = np.flatnonzero(peaks > rel * peaks.max()) if n and peaks.max() > 0 else np.zeros(0, np.int64)
    if not len(loud):
        return []
    cuts = np.flatnonzero(np.diff(loud) > min_gap * 100)
    starts = np.r_[loud[0], loud[cuts + 1]]
    ends = np.r_[loud[cuts], loud[-1]] + 1
    return [(int(a) * hop, int(b) * hop) for a, b in zip(starts, ends)]


def trim(x: np.ndarray, rel: float = 0.02, pad: int = 160) -> np.ndarray:
    """`x` without the leading and trailing parts quieter than `rel` times its peak (keeping `pad` samples), copied."""
    loud = np.flatnonzero(np.abs(x) > rel * np.abs(x).max()) if len(x) and np.abs(x).max() > 0 else []
    if not len(loud):
        return x[:0]
    return x[max(loud[0] - pad, 0) : loud[-1] + 1 + pad].copy()  # a copy: a view would keep all of `x` alive


def fit(x: np.ndarray, length: int = SR) -> np.ndarray:
    """`x` if it is at most `length` samples, else squeezed to `length` (polyphase resampling)."""
    if len(x) <= length:
        return x
    from scipy.signal import resample_poly

    return resample_poly(x, length, len(x) + 1)[:length].astype(np.float32)


def coloured_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of white, pink (1/f power) or brown (1/f^2, integrated, detrended) noise."""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    if kind == "pink":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        return np.fft.irfft(spectrum / np.sqrt(f), n)
    if kind == "brown":
        walk = np.cumsum(white)
        return walk - np.linspace(walk[0], walk[-1], n)
    raise ValueError(f"unknown noise kind {kind!r}; choose from {NOISE_KINDS}")


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`x` plus `noise` scaled to the given signal-to-noise ratio (mean power over the whole clip)."""
    signal, power = np.mean(np.square(x, dtype=np.float64)), np.mean(np.square(noise, dtype=np.float64))
    if signal == 0 or power == 0:
        return x + noise * 1e-4
    return x + noise * np.sqrt(signal / (power * 10 ** (snr_db / 10)))


def reverb(x: np.ndarray, rng: np.random.Generator, length: tuple[float, float] = (0.05, 0.3),
           decay: tuple[float, float] = (0.02, 0.08), sr: int = SR) -> np.ndarray:
    """`x` convolved with a random room response (direct path plus exponentially decaying noise), same length."""
    from scipy.signal import fftconvolve

    t = np.arange(int(sr * rng.uniform(*length))) / sr
    rir = rng.standard_normal(len(t)) * np.exp(-t / rng.uniform(*decay))
    rir[0] = 1.0
    return fftconvolve(x, rir)[: len(x)]


def tilt(x: np.ndarray, db_per_octave: float, pivot: float = 1000.0, sr: int = SR) -> np.ndarray:
    """`x` with its spectrum tilted by `db_per_octave` around `pivot` Hz (a crude random EQ / microphone colour)."""
    spectrum = np.fft.rfft(x)
    f = np.maximum(np.fft.rfftfreq(len(x), 1 / sr), 20.0)
    return np.fft.irfft(spectrum * 10 ** (db_per_octave * np.log2(f / pivot) / 20), len(x))


def augment(x: np.ndarray, rng: np.random.Generator, length: int = SR, shift: bool | int = True,
            gain: tuple[float, float] = (0.1, 0.9), reverb_p: float = 0.5,
            snr_db: tuple[float, float] = (0.0, 20.0), tilt_db: float = 0.0) -> np.ndarray:
    """One noisy `length`-sample version of clip `x`: peak-normalised to a random gain, placed at a random
    offset (`shift` True: anywhere; an int: at most that many samples from the centre; False: at 0),
    spectrally tilted by a random slope in [-tilt_db, tilt_db] dB per octave (if `tilt_db`), reverberated
    with probability `reverb_p`, then mixed with white, pink or brown noise at an SNR drawn uniformly
    from `snr_db`. Float32, exactly `length` samples."""
    x = np.asarray(x, dtype=np.float64)[:length]
    out = np.zeros(length)
    peak = np.abs(x).max() if len(x) else 0.0
    room = length - len(x)
    if shift is True:
        offset = int(rng.integers(0, room + 1))
    elif shift:  # at most `shift` samples either side of the centre
        offset = room // 2 + int(rng.integers(-min(shift, room // 2), min(shift, room // 2) + 1))
    else:
        offset = 0
    out[offset : offset + len(x)] = x / (peak + 1e-9) * rng.uniform(*gain)
    if tilt_db:
        out = tilt(out, rng.uniform(-tilt_db, tilt_db))
    if rng.random() < reverb_p:
        out = reverb(out, rng)
        out *= 0.7 / (np.abs(out).max() + 1e-9)
    noise = coloured_noise(NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))], length, rng)
    return add_noise(out, noise, rng.uniform(*snr_db)).astype(np.float32)


# ---------------------------------------------------------------- features --------------------------------------------
_TORCH_THREADS = threading.Lock()
_inside = [0, 1]  # [how many callers are inside _one_torch_thread, the thread count to restore]


@contextmanager
def _one_torch_thread():
    """One intra-op torch thread while any caller is inside (the first in saves, the last out restores the
    count): features are then bit-identical whatever the machine's core count."""
    with _TORCH_THREADS:
        if _inside[0] == 0:
            _inside[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _inside[0] += 1
    try:
        yield
    finally:
        with _TORCH_THREADS:
            _inside[0] -= 1
            if _inside[0] == 0:
                torch.set_num_threads(_inside[1])


def _chunked(layer: torch.nn.Module, clips: np.ndarray | Sequence[np.ndarray], post: Callable[[torch.Tensor], torch.Tensor],
             threads: int | None) -> np.ndarray:
    clips = np.asarray(clips, dtype=np.float32)
    if clips.ndim != 2:
        raise ValueError(f"clips must be [N, samples], got shape {clips.shape}")

    def run(start: int) -> np.ndarray:
        with torch.no_grad():
            return post(layer(torch.from_numpy(clips[start : start + CHUNK]))).numpy()

    with _one_torch_thread():
        parts = parallel_map(run, range(0, len(clips), CHUNK), threads or min(2, os.cpu_count() or 1))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)


@functools.lru_cache(maxsize=8)
def _layer(kind: str, **params) -> torch.nn.Module:
    """An nnAudio feature layer (built once per parameter set: building its kernels is not free)."""
    from nnAudio import features  # prepare-time dependency (PyPI nnaudio)

    return getattr(features, kind)(sr=SR, verbose=False, **FRAME, **params).eval()


def log_mel(clips: np.ndarray, n_mels: int = 40, fmin: float = 20.0, fmax: float = SR / 2, eps: float = 1e-6,
            threads: int | None = None) -> np.ndarray:
    """Log-mel power spectrograms [N, n_mels, frames] (nnAudio MelSpectrogram: 30 ms Hann STFT, 10 ms hop,
    centred, Slaney mel filters) of float32 clips [N, samples] at SR; log(power + eps)."""
    layer = _layer("MelSpectrogram", n_mels=n_mels, fmin=fmin, fmax=fmax)
    return _chunked(layer, clips, lambda m: torch.log(m + eps), threads)


def mfcc(clips: np.ndarray, n_mfcc: int = 13, n_mels: int = 40, fmin: float = 20.0, fmax: float = 7600.0,
         threads: int | None = None) -> np.ndarray:
    """MFCCs [N, n_mfcc, frames] (nnAudio MFCC: the log-mel power in dB, clipped 80 dB below each clip's
    peak, then an orthonormal DCT-II) of float32 clips [N, samples] at SR."""
    layer = _layer("MFCC", n_mfcc=n_mfcc, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return _chunked(layer, clips, lambda m: m, threads)


def frames(samples: int = SR) -> int:
    """Feature frames of a clip of `samples` samples (centred STFT): 101 for one second."""
    return samples // FRAME["hop_length"] + 1
