"""The audio helpers (dnnkit.audio) and the sound folders suite/keywords and suite/instruments.

Tiny builds (2 words x 2 voices; 3 notes x 2 soundfont renders) run the real renderers and check
that a build is bit-identical when repeated; they skip when a renderer or package is not installed.
"""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from dnnkit import audio
from weightsep import dnn

SR = audio.SR


def folder(name: str):
    return dnn.load_folder(dnn.SUITE_DIR / name).module


def needs(*programs: str, packages: tuple[str, ...] = ("soundfile", "nnAudio")):
    missing = [p for p in programs if shutil.which(p) is None]
    missing += [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {missing}")


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- waveform helpers ------------------------------------
def test_augment_keeps_length_and_is_deterministic_per_seed():
    clip = tone(0.4)
    a = audio.augment(clip, np.random.default_rng([0, 1, 2]))
    b = audio.augment(clip, np.random.default_rng([0, 1, 2]))
    c = audio.augment(clip, np.random.default_rng([0, 1, 3]))
    assert a.shape == (SR,) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    long = audio.augment(tone(1.3), np.random.default_rng(0), length=8000, shift=False)
    assert long.shape == (8000,)


def test_add_noise_hits_the_snr():
    rng = np.random.default_rng(0)
    x = tone(1.0)
    for kind in audio.NOISE_KINDS:
        noise = audio.coloured_noise(kind, SR, rng)
        assert noise.shape == (SR,) and np.isfinite(noise).all()
        mixed = audio.add_noise(x, noise, 10.0)
        snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((mixed - x) ** 2))
        assert snr == pytest.approx(10.0, abs=1e-6)
    with pytest.raises(ValueError):
        audio.coloured_noise("blue", 10, rng)


def test_pink_and_brown_noise_are_low_heavy():
    rng = np.random.default_rng(0)
    def low_share(x):  # share of power below 500 Hz
        p = np.abs(np.fft.rfft(x)) ** 2
        return p[: 500 * len(x) // SR].sum() / p.sum()
    white, pink, brown = (audio.coloured_noise(k, SR, rng) for k in audio.NOISE_KINDS)
    assert low_share(white) < low_share(pink) < low_share(brown)


def test_segments_trim_fit_and_resample():
    gap = np.zeros(SR // 2, np.float32)
    x = np.concatenate([gap, tone(0.2), gap, tone(0.3), gap])
    cuts = audio.segments(x)
    assert len(cuts) == 2
    assert [round((b - a) / SR, 2) for a, b in cuts] == [0.2, 0.3]
    trimmed = audio.trim(np.concatenate([gap, tone(0.2), gap]), pad=0)
    assert abs(len(trimmed) - 0.2 * SR) <= 2 and trimmed.base is None  # a copy, not a view
    assert len(audio.fit(tone(1.5))) == SR and len(audio.fit(tone(0.5))) == SR // 2
    assert len(audio.resample(np.zeros(22050), 22050)) == SR


def test_executable_names_the_missing_program():
    with pytest.raises(FileNotFoundError) as e:
        audio.executable("no-such-renderer-xyz", "apt-get install no-such-renderer-xyz")
    assert "no-such-renderer-xyz" in e.value.filename and "apt-get install" in str(e.value)
    with pytest.raises(FileNotFoundError):
        audio.python_package("no_such_package_xyz", "pip install no-such-package-xyz")


# ---------------------------------------------------------------- features --------------------------------------------
@needs(packages=("nnAudio",))
def test_features_shapes_and_independent_of_threads():
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((audio.CHUNK + 3, SR)).astype(np.float32)
    m1 = audio.mfcc(clips, threads=1)
    assert m1.shape == (len(clips), 13, audio.frames()) == (audio.CHUNK + 3, 13, 101) and m1.dtype == np.float32
    assert np.array_equal(m1, audio.mfcc(clips, threads=2))
    lm = audio.log_mel(clips[:2], n_mels=40)
    assert lm.shape == (2, 40, 101) and np.isfinite(lm).all()
    # a 1 kHz tone peaks in the mel band around 1 kHz, not at the edges
    band = audio.log_mel(tone(1.0, 1000.0)[None], n_mels=40)[0].mean(axis=1).argmax()
    assert 10 < band < 30


# ---------------------------------------------------------------- keywords --------------------------------------------
def test_keyword_voices_are_split_by_voice():
    kw = folder("keywords")
    variants = [f"v{i}" for i in range(40)]
    vs = kw.voices(variants)
    assert vs == kw.voices(variants)  # seeded
    split = {s: [v for v in vs if v["split"] == s] for s in ("train", "val", "test")}
    flite = {v["voice"]: v["split"] for v in vs if v["engine"] == "flite"}
    assert flite == {voice: "val" if voice == kw.FLITE_VAL else "test" for voice in kw.FLITE_VOICES}  # never trained
    assert {v["voice"] for v in split["test"] if v["engine"] == "festival"} == {kw.FESTIVAL_TEST}
    variant_of = {s: {v["voice"].split("+")[1] for v in split[s] if v["engine"] == "espeak-ng"} for s in split}
    assert len(variant_of["test"]) == kw.TEST_VARIANTS and len(variant_of["val"]) == kw.VAL_VARIANTS
    assert not (variant_of["train"] & variant_of["val"] or variant_of["train"] & variant_of["test"]
                or variant_of["val"] & variant_of["test"])


@needs("espeak-ng", "flite")
def test_keywords_tiny_build_is_deterministic():
    kw = folder("keywords")
    vs = [{"engine": "espeak-ng", "voice": "en-us+m3", "speed": 150, "pitch": 50, "split": "train"},
          {"engine": "flite", "voice": "slt", "stretch": 1.0, "f0": 170, "split": "test"}]
    a, ga = kw.build(vs, words=("yes", "no"))
    b, gb = kw.build(vs, words=("yes", "no"))
    n = 2 * kw.TRAIN_COPIES  # training clips are augmented TRAIN_COPIES times, the others once
    assert a.train.x.shape == (n, 13, 1, 101) and a.test.x.shape == (2, 13, 1, 101) and len(a.val.y) == 0
    assert a.train.y.tolist() == [0, 1] * kw.TRAIN_COPIES and ga["train"].tolist() == [0] * n
    assert ga["test"].tolist() == [1, 1]
    assert not np.array_equal(a.train.x[0], a.train.x[2])  # copies differ
    for split in ("train", "test"):
        assert np.array_equal(getattr(a, split).x, getattr(b, split).x)
        assert np.array_equal(ga[split], gb[split])


@needs("espeak-ng")
def test_espeak_one_call_cut_matches_the_word_count():
    kw = folder("keywords")
    clips = kw.render({"engine": "espeak-ng", "voice": "en-gb+f2", "speed": 180, "pitch": 60}, words=kw.WORDS)
    assert len(clips) == 10 and all(0.05 * SR < len(c) <= SR for c in clips)


# ---------------------------------------------------------------- instruments -----------------------------------------
def test_instrument_score_and_validation_units():
    ins = folder("instruments")
    score = ins.events()
    assert len(score) == 9 * 8 * 8 * 2 + 47 * 4 == 1340
    assert {e["family"] for e in score} == set(ins.FAMILIES)
    held = ins.val_units(score)
    assert held == ins.val_units(score) and len(held) == 9 + ins.VAL_DRUM_NOTES
    for first, _, _ in ins.MELODIC.values():
        assert len(held & set(range(first, first + 8))) == 1


@needs(packages=("mido",))
def test_midi_file_holds_the_score(tmp_path):
    import mido

    ins = folder("instruments")
    picks = ins.events()[:3] + ins.events()[-2:]
    score = [dict(e, start=ins.LEAD_S + i * (ins.SLOT_S + ins.LEAD_S)) for i, e in enumerate(picks)]
    ins.write_midi(tmp_path / "s.mid", score)
    seconds, ons = 0.0, []
    for msg in mido.MidiFile(tmp_path / "s.mid"):  # iterating a MidiFile yields times in seconds
        seconds += msg.time
        if msg.type == "note_on":
            ons.append((round(seconds, 3), msg.channel, msg.note))
    want = [(round(ins.LEAD_S + i * (ins.SLOT_S + ins.LEAD_S), 3), 0 if e["program"] >= 0 else 9, e["note"])
            for i, e in enumerate(score)]
    assert ons == want


@needs("fluidsynth", packages=("mido", "soundfile", "nnAudio"))
def test_instruments_tiny_build_is_deterministic():
    ins = folder("instruments")
    full = ins.events()
    picks = [full[0], full[16 * 2 * 8], full[-1]]  # a piano, an organ and a drum event
    score = [dict(e, start=ins.LEAD_S + i * (ins.SLOT_S + ins.LEAD_S)) for i, e in enumerate(picks)]
    sf2 = ins.SOUNDFONTS[0]  # the small sf2 loads fast; twice, as "test" (index 0) and "train" (index 1)
    a, ga = ins.build(score, (sf2, sf2))
    b, gb = ins.build(score, (sf2, sf2))
    assert a.test.x.shape == (3, 40, 1, 101) and a.test.y.tolist() == [0, 2, 9]
    assert len(a.train.y) + len(a.val.y) == 3
    assert set(ga["test"]) & (set(ga["train"]) | set(ga["val"])) == set()
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, split).x, getattr(b, split).x)


def test_centred_shift_and_tilt():
    clip = tone(0.2)
    out = audio.augment(clip, np.random.default_rng(0), shift=160, reverb_p=0.0, snr_db=(80.0, 80.0))
    loud = np.flatnonzero(np.abs(out) > 0.1 * np.abs(out).max())
    centre = (SR - len(clip)) // 2
    assert abs(loud[0] - centre) <= 161 and abs(loud[-1] - (centre + len(clip))) <= 161
    noise = audio.coloured_noise("white", SR, np.random.default_rng(1))
    def high_share(x):
        p = np.abs(np.fft.rfft(x)) ** 2
        return p[len(p) // 2 :].sum() / p.sum()
    assert high_share(audio.tilt(noise, -3.0)) < high_share(noise) < high_share(audio.tilt(noise, 3.0))
