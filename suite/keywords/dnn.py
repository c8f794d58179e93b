"""Keywords: which of 10 spoken command words (yes no up down left right on off stop go) a 1-s clip holds.

Source: SYNTHETIC speech, rendered at prepare time by the Debian TTS engines espeak-ng (formant
synthesis; 101 voice variants x 8 English accents), flite (kal kal16 awb rms slt) and festival
(kal_diphone ked_diphone from festvox-kallpc16k / festvox-kdlpc16k, cmu_us_slt_arctic_hts from
festvox-us-slt-hts); no recording of a person is used. A "voice" is one engine configuration:
espeak-ng: each of the 101 variants with 4 of the 8 accents (seeded), each with its own seeded speed
(110-210 wpm) and pitch (15-85); flite: 5 voices x 3 duration stretches x 3 mean F0s; festival: 3
voices x 3 duration stretches. 458 voices x 10 words = 4,580 clips (290 / 49 / 119 voices).
Split by voice, so no voice is in two splits; flite is never trained on. The test set is flite's
kal, kal16, rms and slt voices, festival's cmu_us_slt_arctic_hts (a voice never trained on) and the
espeak-ng voices of 20 held-out variants (a random 20 of 101, seed 0). The validation set is the
espeak-ng voices of 10 other held-out variants plus flite's awb voice: like the test set it holds an
engine never trained on, so the stopping rule and the control select for what the test measures.
Training is the remaining espeak-ng voices plus festival's two diphone voices. The voice id is stored as `groups_*`.
Preprocessing: each rendering is resampled to 16 kHz, trimmed of silence and squeezed to at most
1 s, then (every split alike, seeded per clip) peak-normalised to a random gain, placed in a 1-s clip
at most 150 ms from its centre, reverberated (random exponential-decay room response) with p=0.5 and
mixed with white, pink or brown noise at 0-20 dB SNR; each training clip is augmented 3 times
(differently), validation and test clips once. Features: 13 MFCCs x 101 frames (nnAudio: 40 mel
bands, 30 ms window, 10 ms hop), mean-normalised per clip and coefficient, then standardised per
coefficient with the train split's mean and std. Inputs are 1-row images (13, 1, 101) and the convs
run along time (as in suite/watch).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dnnkit import audio, datasets
from weightsep import prepared
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
N_MFCC = 13
FRAMES = audio.frames()  # 101

META = {
    "task": "spoken keyword spotting (10 command words), synthetic speech",
    "source": "Debian espeak-ng 1.51, flite 2.2, festival 2.5 + festvox-kallpc16k, festvox-kdlpc16k, "
              "festvox-us-slt-hts: words rendered at prepare time",
    "licence": "generated data; engines: espeak-ng GPL-3, flite BSD-style, festival/festvox X11-style",
    "real": False,
    "origin": "synthetic",
    "input": (N_MFCC, 1, FRAMES),
    "classes": len(WORDS),
    "stands_in_for": "Google Speech Commands (GSC)",
    "split": "voice-disjoint: test = flite kal/kal16/rms/slt + festival cmu_us_slt_arctic_hts + espeak-ng voices of 20 "
             "held-out variants; val = flite awb + espeak-ng voices of 10 other variants; train = the rest",
}
TRAIN = {"steps": 10_000, "batch_size": 100, "lr": 1e-3, "eval_every": 100}
FILE = "keywords.v2.npz"  # v2: flite awb validates (v1: test)
SEED = 0

ESPEAK_VARIANTS = Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data/voices/!v")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")
ACCENTS_PER_VARIANT = 4
TEST_VARIANTS, VAL_VARIANTS = 20, 10
TRAIN_COPIES = 3  # differently augmented copies of each training clip (validation and test: one)
SHIFT = 2400  # a word is placed at most 150 ms from the clip's centre
FLITE_VOICES = {"kal": (95, 110, 125), "kal16": (95, 110, 125), "awb": (95, 110, 125), "rms": (95, 110, 125),
                "slt": (150, 170, 190)}
FESTIVAL_VOICES = {"kal_diphone": "english/kal_diphone", "ked_diphone": "english/ked_diphone",
                   "cmu_us_slt_arctic_hts": "us/cmu_us_slt_arctic_hts"}
FESTIVAL_TEST = "cmu_us_slt_arctic_hts"
FLITE_VAL = "awb"  # the one flite voice in validation; the rest test
STRETCHES = (0.8, 1.0, 1.25)
INSTALL = {
    "espeak-ng": "apt-get install espeak-ng",
    "flite": "apt-get install flite",
    "festival": "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
    "soundfile": "pip install soundfile==0.14.0",
    "nnAudio": "pip install nnaudio==0.3.4",
}


def build_model() -> TemplateNet:
    # narrow convs along time (13 MFCC channels in), then wide dense layers, like suite/watch
    convs = [Conv(1, 5, 16, pool=(1, 3)), Conv(1, 5, 32, pool=(1, 3)), Conv(1, 5, 32, pool=(1, 2))]
    return TemplateNet((N_MFCC, 1, FRAMES), convs, dense=[256, 128], classes=len(WORDS))


# ------------------------------------------------------------------ sources --------------------------------------------
def _sources() -> dict[str, Path]:
    """Every program, voice and package prepare needs, checked before any work (FileNotFoundError names the first missing)."""
    found = {
        "espeak-ng": audio.executable("espeak-ng", INSTALL["espeak-ng"]),
        "variants": datasets.require(ESPEAK_VARIANTS, INSTALL["espeak-ng"]),
        "flite": audio.executable("flite", INSTALL["flite"]),
        "festival": audio.executable("festival", INSTALL["festival"]),
    }
    for voice, folder in FESTIVAL_VOICES.items():
        found[voice] = datasets.require(Path("/usr/share/festival/voices") / folder, INSTALL["festival"])
    for package in ("soundfile", "nnAudio"):
        found[package] = audio.python_package(package, INSTALL[package])
    return found


def voices(variants: list[str]) -> list[dict]:
    """Every voice configuration, in a fixed order (its index is the voice id), with its split."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(variants))
    split_of = {variants[i]: "test" for i in order[:TEST_VARIANTS]}
    split_of |= {variants[i]: "val" for i in order[TEST_VARIANTS : TEST_VARIANTS + VAL_VARIANTS]}
    out = []
    for variant in variants:
        for accent in sorted(rng.choice(len(ESPEAK_ACCENTS), ACCENTS_PER_VARIANT, replace=False)):
            out.append({"engine": "espeak-ng", "voice": f"{ESPEAK_ACCENTS[accent]}+{variant}",
                        "speed": int(rng.integers(110, 211)), "pitch": int(rng.integers(15, 86)),
                        "split": split_of.get(variant, "train")})
    for voice, f0s in FLITE_VOICES.items():
        for stretch in STRETCHES:
            for f0 in f0s:
                out.append({"engine": "flite", "voice": voice, "stretch": stretch, "f0": f0,
                            "split": "val" if voice == FLITE_VAL else "test"})
    for voice in FESTIVAL_VOICES:
        for stretch in STRETCHES:
            out.append({"engine": "festival", "voice": voice, "stretch": stretch,
                        "split": "test" if voice == FESTIVAL_TEST else "train"})
    return out


# ------------------------------------------------------------------ rendering ------------------------------------------
def _espeak(v: dict, words: tuple[str, ...], tmp: Path) -> list[np.ndarray]:
    """All words in one espeak-ng call (SSML, 600 ms breaks), cut at the breaks; per word if the cut fails."""
    def run(text: str, ssml: bool) -> np.ndarray:
        cmd = ["espeak-ng", *(["-m"] if ssml else []), "-v", v["voice"], "-s", str(v["speed"]), "-p", str(v["pitch"]),
               "--stdout", text]
        return audio.read_wav(subprocess.run(cmd, capture_output=True, check=True).stdout)

    x = run(" ".join(f"<s>{w}</s><break time='600ms'/>" for w in words), ssml=True)
    cuts = audio.segments(x)
    if len(cuts) == len(words):
        return [x[max(a - 160, 0) : b + 160] for a, b in cuts]
    return [run(w, ssml=False) for w in words]


def _flite(v: dict, words: tuple[str, ...], tmp: Path) -> list[np.ndarray]:
    out = []
    for w in words:
        wav = tmp / f"{w}.wav"
        subprocess.run(["flite", "-voice", v["voice"], "--setf", f"duration_stretch={v['stretch']}",
                        "--setf", f"int_f0_target_mean={v['f0']}", "-t", w, "-o", str(wav)],
                       capture_output=True, check=True)
        out.append(audio.read_wav(wav))
    return out


def _festival(v: dict, words: tuple[str, ...], tmp: Path) -> list[np.ndarray]:
    """One festival process per voice: a Scheme script that saves each word's utterance to its own wav."""
    lines = [f"(voice_{v['voice']})", f"(Parameter.set 'Duration_Stretch {v['stretch']})"]
    lines += [f'(utt.save.wave (utt.synth (Utterance Text "{w}")) "{tmp / f"{w}.wav"}" \'riff)' for w in words]
    (tmp / "say.scm").write_text("\n".join(lines) + "\n")
    subprocess.run(["festival", "-b", str(tmp / "say.scm")], capture_output=True, check=True)
    return [audio.read_wav(tmp / f"{w}.wav") for w in words]


RENDER = {"espeak-ng": _espeak, "flite": _flite, "festival": _festival}


def render(v: dict, words: tuple[str, ...] = WORDS) -> list[np.ndarray]:
    """The words said by voice `v`: float32 clips at 16 kHz, trimmed of silence and at most 1 s long."""
    with tempfile.TemporaryDirectory(prefix="weightsep-kws-") as tmp:
        clips = RENDER[v["engine"]](v, words, Path(tmp))
    out = [audio.fit(audio.trim(c)) for c in clips]
    if any(len(c) == 0 for c in out):
        raise RuntimeError(f"{v['engine']} {v['voice']} rendered a silent word")
    return out


def features(clips: list[np.ndarray], keys: list[tuple[int, ...]]) -> np.ndarray:
    """[N, 13, 1, 101] MFCCs of the augmented clips (each augmented with its own rng, seeded by its key), per-clip
    mean-normalised. Done in chunks, so raw audio of only a few chunks is held at a time."""
    def one_chunk(start: int) -> np.ndarray:
        part = range(start, min(start + audio.CHUNK, len(clips)))
        noisy = np.stack([audio.augment(clips[i], np.random.default_rng([SEED, *keys[i]]), shift=SHIFT) for i in part])
        return audio.mfcc(noisy, n_mfcc=N_MFCC, threads=1)

    parts = audio.parallel_map(one_chunk, range(0, len(clips), audio.CHUNK), min(2, os.cpu_count() or 1))
    x = np.concatenate(parts)
    x -= x.mean(axis=2, keepdims=True)  # cepstral mean normalisation, per clip and coefficient
    return x[:, :, None, :]


def build(voice_list: list[dict] | None = None, words: tuple[str, ...] = WORDS) -> tuple[Dataset, dict[str, np.ndarray]]:
    """Render, augment and featurise every voice; split by voice. `voice_list`/`words` shrink it (for tests)."""
    vs = voices(sorted(os.listdir(ESPEAK_VARIANTS))) if voice_list is None else voice_list
    rendered = audio.parallel_map(lambda v: render(v, words), vs)
    clips, keys, labels, split = [], [], [], []
    for vid, (v, said) in enumerate(zip(vs, rendered)):
        for copy in range(TRAIN_COPIES if v["split"] == "train" else 1):
            for word, clip in zip(words, said):
                clips.append(clip)
                keys.append((vid, WORDS.index(word), copy))
                labels.append(WORDS.index(word))
                split.append(v["split"])
    x = features(clips, keys)
    y, vid, split = np.asarray(labels, np.int64), np.asarray([k[0] for k in keys], np.int64), np.asarray(split)
    return datasets.split_by_label(x, y, vid, split, axis=(0, 2, 3))


def prepare(data_dir: Path) -> None:
    _sources()  # every source checked before any work is done
    datasets.prepare_npz(Path(data_dir) / FILE, build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
