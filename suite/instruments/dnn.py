"""Instruments: which of 10 instrument families plays a 1-s note (piano, mallet, organ, guitar, bass,
strings, brass, reed, pipe, drums).

Source: real sampled instruments from three General MIDI soundfonts in Debian (TimGM6mb.sf2 from
timgm6mb-soundfont, FluidR3Mono_GM.sf3 from fluidr3mono-gm-soundfont, MuseScore_General_Lite.sf3
from musescore-general-soundfont-small), RENDERED at prepare time by fluidsynth (reverb and chorus
off, 16 kHz) from one MIDI score written with mido: for each of the 72 GM programs of the 9 melodic
families (8 programs each), 8 notes spread over the family's range x 2 velocities; for drums, the
47 GM percussion notes 35-81 x 4 velocities on channel 10; 1,340 events, each a 0.8-s note in its
own 1-s slot, ended by All Sound Off. Slots a soundfont leaves silent (a program it lacks) are dropped.
Split by soundfont: the test set is every event rendered by TimGM6mb, a soundfont never trained on
(MuseScore General is derived from FluidR3, so these two are not independent and both train);
validation is carved from the two training soundfonts, program-disjoint: one held-out program per
melodic family and 6 of the 47 drum notes (seed 0), all of their events in both soundfonts. `groups_*`
holds soundfont * 1000 + unit, where the unit is the GM program, or 128 + the note for drums.
Preprocessing: each slot is peak-normalised to a random gain, its spectrum tilted by a random
-3..+3 dB per octave (a random EQ), reverberated (random exponential-decay room response) with p=0.5
and mixed with white, pink or brown noise at 20-40 dB SNR (seeded per clip, every split alike).
Features: 40 log-mel bands x 101 frames (nnAudio: 30 ms window, 10 ms hop, 20 Hz-8 kHz), less each
clip's mean (level normalisation), then standardised per band with the train split's mean and std.
Inputs are 1-row images (40, 1, 101): the mel bands are channels and the convs run along time (as in
suite/watch).
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

# family: (first GM program, lowest note, highest note); 8 programs each. Drums are channel 10.
MELODIC = {"piano": (0, 36, 96), "mallet": (8, 60, 96), "organ": (16, 36, 84), "guitar": (24, 40, 84),
           "bass": (32, 28, 60), "strings": (40, 48, 84), "brass": (56, 48, 80), "reed": (64, 50, 84),
           "pipe": (72, 60, 96)}
FAMILIES = (*MELODIC, "drums")
DRUM_NOTES = range(35, 82)
N_MELS = 40
FRAMES = audio.frames()  # 101

META = {
    "task": "instrument-family classification of 1-s notes (real sampled instruments, rendered)",
    "source": "Debian fluidsynth 2.3 + timgm6mb-soundfont, fluidr3mono-gm-soundfont, musescore-general-soundfont-small "
              "(GM soundfonts of recorded instrument samples); a mido-written MIDI score rendered at prepare time",
    "licence": "TimGM6mb GPL-2; FluidR3Mono MIT; MuseScore General MIT (parts public domain / CC0)",
    "real": False,
    "origin": "rendered",
    "input": (N_MELS, 1, FRAMES),
    "classes": len(FAMILIES),
    "stands_in_for": "ESC-10 / UrbanSound8K",
    "split": "soundfont-disjoint: test = TimGM6mb (never trained on); train/val = FluidR3Mono + MuseScore General, "
             "val program-disjoint (1 program per family, 6 drum notes)",
}
TRAIN = {"steps": 5_000, "batch_size": 100, "lr": 1e-3, "eval_every": 50}  # it peaks early: check often
FILE = "instruments.npz"
SEED = 0

SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
              "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3")
TEST_SOUNDFONT = 0
INSTALL = {
    SOUNDFONTS[0]: "apt-get install timgm6mb-soundfont",
    SOUNDFONTS[1]: "apt-get install fluidr3mono-gm-soundfont",
    SOUNDFONTS[2]: "apt-get install musescore-general-soundfont-small",
    "fluidsynth": "apt-get install fluidsynth",
    "mido": "pip install mido==1.3.3",
    "soundfile": "pip install soundfile==0.14.0",
    "nnAudio": "pip install nnaudio==0.3.4",
}
NOTES_PER_PROGRAM, VELOCITIES, DRUM_VELOCITIES = 8, (70, 110), (40, 70, 100, 127)
NOTE_S, SLOT_S, LEAD_S = 0.8, 1.0, 0.1  # note length, clip (slot) length, set-up gap before each slot
VAL_DRUM_NOTES = 6
TILT_DB = 3.0  # random spectral tilt of each clip, dB per octave (a crude random EQ / microphone colour)


def build_model() -> TemplateNet:
    # narrow convs along time (40 mel-band channels in), then wide dense layers, like suite/watch
    convs = [Conv(1, 5, 16, pool=(1, 3)), Conv(1, 5, 32, pool=(1, 3)), Conv(1, 5, 32, pool=(1, 2))]
    return TemplateNet((N_MELS, 1, FRAMES), convs, dense=[256, 120], classes=len(FAMILIES))


def _sources() -> None:
    """Every program, soundfont and package prepare needs, checked before any work."""
    audio.executable("fluidsynth", INSTALL["fluidsynth"])
    for path in SOUNDFONTS:
        datasets.require(Path(path), INSTALL[path])
    for package in ("mido", "soundfile", "nnAudio"):
        audio.python_package(package, INSTALL[package])


def events() -> list[dict]:
    """The score, in time order: family, GM program (-1 for drums), note, velocity; unit = program or 128 + drum note."""
    out = []
    for family, (first, low, high) in MELODIC.items():
        for program in range(first, first + 8):
            for k in range(NOTES_PER_PROGRAM):
                note = round(low + (high - low) * k / (NOTES_PER_PROGRAM - 1))
                out += [dict(family=family, program=program, note=note, velocity=v, unit=program) for v in VELOCITIES]
    for note in DRUM_NOTES:
        out += [dict(family="drums", program=-1, note=note, velocity=v, unit=128 + note) for v in DRUM_VELOCITIES]
    for i, e in enumerate(out):
        e["start"] = LEAD_S + i * (SLOT_S + LEAD_S)  # seconds from the start of the file
    return out


def write_midi(path: Path, score: list[dict]) -> None:
    """The score as a type-0 MIDI file (mido), 1 tick = 1 ms: program change 50 ms before each note, note
    on at its slot's start, note off after NOTE_S, All Sound Off (CC 120) at the slot's end."""
    import mido  # prepare-time dependency (PyPI mido)

    midi = mido.MidiFile(type=0, ticks_per_beat=500)  # 120 bpm: a beat is 0.5 s, so 1 tick = 1 ms
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    timed = []
    for e in score:
        channel = 9 if e["program"] < 0 else 0
        if channel == 0:
            timed.append((e["start"] - 0.05, mido.Message("program_change", channel=0, program=e["program"])))
        timed.append((e["start"], mido.Message("note_on", channel=channel, note=e["note"], velocity=e["velocity"])))
        timed.append((e["start"] + NOTE_S, mido.Message("note_off", channel=channel, note=e["note"], velocity=0)))
        timed.append((e["start"] + SLOT_S, mido.Message("control_change", channel=channel, control=120, value=0)))
    now = 0
    for seconds, message in timed:
        tick = round(seconds * 1000)
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=100))
    midi.save(path)


def render(soundfont: str, midi: Path, wav: Path) -> None:
    subprocess.run(["fluidsynth", "-ni", "-q", "-o", "synth.reverb.active=0", "-o", "synth.chorus.active=0",
                    "-F", str(wav), "-r", str(audio.SR), "-g", "0.8", soundfont, str(midi)],
                   check=True, capture_output=True)


def slots(wav: Path, score: list[dict]) -> tuple[list[np.ndarray], list[int]]:
    """The 1-s clip of each event that sounds (RMS >= 1e-4) and its index in the score."""
    starts = [round(e["start"] * audio.SR) for e in score]
    clips, kept = [], []
    for i, clip in enumerate(audio.read_slices(wav, starts, round(SLOT_S * audio.SR))):
        if len(clip) and np.sqrt(np.mean(np.square(clip))) >= 1e-4:
            clips.append(clip)
            kept.append(i)
    return clips, kept


def features(clips: list[np.ndarray], keys: list[tuple[int, int]]) -> np.ndarray:
    """[N, 40, 1, 101] log-mel of the augmented clips (each augmented with its own rng, seeded by its key), less
    each clip's mean."""
    def one_chunk(start: int) -> np.ndarray:
        part = range(start, min(start + audio.CHUNK, len(clips)))
        noisy = np.stack([audio.augment(clips[i], np.random.default_rng([SEED, *keys[i]]), shift=False,
                                        snr_db=(20.0, 40.0), tilt_db=TILT_DB) for i in part])
        return audio.log_mel(noisy, n_mels=N_MELS, threads=1)

    parts = audio.parallel_map(one_chunk, range(0, len(clips), audio.CHUNK), min(2, os.cpu_count() or 1))
    x = np.concatenate(parts)
    x -= x.mean(axis=(1, 2), keepdims=True)  # level normalisation: each clip's mean log-mel is 0
    return x[:, :, None, :]


def val_units(score: list[dict]) -> set[int]:
    """The held-out validation units: one program per melodic family and VAL_DRUM_NOTES drum notes (seeded)."""
    rng = np.random.default_rng(SEED)
    held = {first + int(rng.integers(8)) for first, _, _ in MELODIC.values()}
    held |= {128 + int(n) for n in rng.choice(list(DRUM_NOTES), VAL_DRUM_NOTES, replace=False)}
    return held


def build(score: list[dict] | None = None, soundfonts: tuple[str, ...] = SOUNDFONTS) -> tuple[Dataset, dict[str, np.ndarray]]:
    """Write the score, render it with each soundfont (in parallel), cut, augment, featurise, split.
    `score`/`soundfonts` shrink it (for tests); soundfont index TEST_SOUNDFONT is the test set."""
    score = events() if score is None else score
    held = val_units(events())
    with tempfile.TemporaryDirectory(prefix="weightsep-instruments-") as tmp:
        midi = Path(tmp) / "score.mid"
        write_midi(midi, score)
        wavs = [Path(tmp) / f"render{i}.wav" for i in range(len(soundfonts))]
        audio.parallel_map(lambda i: render(soundfonts[i], midi, wavs[i]), range(len(soundfonts)), len(soundfonts))
        xs, ys, groups, split = [], [], [], []
        for s, wav in enumerate(wavs):  # one soundfont's audio in memory at a time
            clips, kept = slots(wav, score)
            wav.unlink()
            xs.append(features(clips, [(s, i) for i in kept]))
            for i in kept:
                e = score[i]
                ys.append(FAMILIES.index(e["family"]))
                groups.append(s * 1000 + e["unit"])
                split.append("test" if s == TEST_SOUNDFONT else "val" if e["unit"] in held else "train")
    x, y = np.concatenate(xs), np.asarray(ys, np.int64)
    return datasets.split_by_label(x, y, np.asarray(groups, np.int64), np.asarray(split), axis=(0, 2, 3))


def prepare(data_dir: Path) -> None:
    _sources()  # every source checked before any work is done
    datasets.prepare_npz(Path(data_dir) / FILE, build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
