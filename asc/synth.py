"""A synthetic multi-device acoustic scene dataset, written in the DCASE2019 Task 1B layout.

Why synthetic: tests, the demo and the benchmarks need a set with the real one's structure (10 scenes,
cities and locations, a train / evaluate split by location, a reference device A and devices B and C
recording some segments in parallel) that any machine can make in seconds without a download.

How a clip is made (every step seeded from the dataset seed and the clip's name, so a set is the same
whichever process writes which clip):

1. **Scene content** (``SCENE_PROFILES``): coloured background noise (a spectral slope plus broad
   bumps, slowly modulated), tonal components (engine hum, music) and events (voices, footsteps,
   bird chirps, car pass-bys, chimes, brake squeal, rumble) at scene-typical rates. Every *location*
   draws its own variation of its scene's profile (colour, level, event rates, hum pitch,
   reverberation), so classifying unseen locations is not trivial.
2. **Room**: an exponentially decaying noise tail with a scene- and location-dependent RT60 (the
   high band decays faster), convolved with the dry mix. Reverberation is a scene cue, as the paper
   says, and it is convolutional like the device.
3. **Devices** (``DEVICE_PROFILES``): the same reverberant signal is "recorded" by device A (flat,
   quiet, linear) and, for parallel segments, by B and C (and, in the evaluation split only, by the
   unseen devices s1 and s2, which training never hears), the way DCASE 2020 Task 1A simulated its
   devices S1-S6 (a device impulse response, then device-specific dynamic range compression;
   Heittola et al., DCASE 2020) and with published measurements of real phones:

   - *impulse response*: a low-frequency roll-off, resonances, a microphone-port notch and a steep
     high-frequency roll-off (the band limit), within what Android's compatibility rules allow
     (+-10 dB 100 Hz - 7 kHz, +-30 dB above) and phone measurements show (about 8 dB per octave
     below ~90 Hz, port notches up to 21 dB, one phone -24 dB at 5 kHz; iOS's high-pass near 200 Hz);
   - *self-noise* of the microphone and preamplifier (white, with 1/f-like noise below ~200 Hz),
     added after the response: a MEMS microphone's ~30 dB(A) SPL against a quiet park's ~40 puts the
     floor 10-25 dB under quiet scenes. It masks quiet bands differently from frame to frame (an
     event lifts a band out of it), and above the band limit the recording holds the floor only:
     information lost, not rescaled;
   - *clipping* of B's converter on loud events (B is 6 dB more sensitive than A with less headroom);
   - *dynamics*: B's fast 2:1 compressor and C's automatic gain control (iOS applies AGC unless an
     app asks for measurement mode), fast enough (5-20 ms attack, 80-300 ms release) to follow a voice
     or a pass-by within the clip, so that loud frames are lowered more than quiet ones and C's
     pauses are lifted, its noise floor with them;
   - *per-recording variation* (``Take``; handling, pocket, orientation): each recording draws its
     own tilt and resonance changes, sensitivity (which moves the clipping and the dynamics'
     operating point), self-noise level and dynamics threshold, so that no single per-device
     correction fits every clip.

   The response is a constant vector per band in the log-Mel domain (the paper's eq. 4), which
   spectrogram-wise mean subtraction removes; the rest depends on the level and is not: on the
   parallel pairs of the default set, 24% (B) and 41% (C) of the RMS log-Mel difference is left
   after per-clip mean subtraction (about 10% with the response alone; ``tests/test_synth.py``
   bounds it).

Proportions follow the real fold 1: per scene 6 locations, two thirds of them (and their segments)
in train and one third in evaluate; A-only segments far outnumber the parallel ones, and the
parallel A/B/C groups are split half and half between train and evaluate as in the real fold. The
default set (1480 clips of 3 s: 670 A + 80 B + 80 C in train, 330 + 80 + 80 + 80 s1 + 80 s2 in evaluate) makes B
and C 10% each of the training clips (5% in the real fold) and puts 2 parallel groups in every
training location, so that the validation protocol's held-out locations hold 20 clips of B and of C.
Clips are 3 s (the real set's are 10 s; ``--seconds 10`` writes those) so that the default set is
written in seconds and a search on it trains in minutes on two cores.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile

from asc import REFERENCE_DEVICE, SCENES
from asc.dataset import Dataset, read_development
from asc.errors import AscError
from asc.parallel import process_map
from asc.progress import progress as show_progress

CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna")


MIN_SECONDS, MAX_SECONDS = 0.1, 600.0  # shorter clips hold too few frames to shape; longer ones, memory


@dataclass(frozen=True)
class SynthConfig:
    segments_per_scene: int = 100  # device-A segments per scene: 67 train, 33 evaluate
    parallel_per_scene: int = 16  # of those, also recorded by B and C: half train (2 a train location), half evaluate
    seconds: float = 3.0  # the real set's clips are 10 s; 3 s keeps the default set quick to write and to train on
    sample_rate: int = 44100  # the real set's rate
    seed: int = 0
    locations_per_scene: int = 6  # two thirds to train, one third to evaluate, as the real fold splits locations
    devices: tuple[str, ...] = ("a", "b", "c")  # the 2019 set's; A is the reference and must come first
    # devices that record only the evaluation split's parallel segments, never heard in training (as
    # DCASE 2020's s4-s6); () for a 2019-like set
    unseen: tuple[str, ...] = ("s1", "s2")

    def __post_init__(self):
        problems = []
        if self.segments_per_scene < 2:
            problems.append("--segments-per-scene must be at least 2 (one train, one evaluate)")
        if not 0 <= self.parallel_per_scene <= self.segments_per_scene:
            problems.append("--parallel-per-scene must be between 0 and --segments-per-scene")
        elif self.segments_per_scene - self.train_segments < self.parallel_per_scene - self.train_parallel:
            problems.append(f"--parallel-per-scene {self.parallel_per_scene} needs "
                            f"{self.parallel_per_scene - self.train_parallel} evaluate segments per scene, but "
                            f"--segments-per-scene {self.segments_per_scene} gives {self.segments_per_scene - self.train_segments}")
        if not MIN_SECONDS <= self.seconds <= MAX_SECONDS:  # also refuses nan
            problems.append(f"--seconds must be {MIN_SECONDS} to {MAX_SECONDS}, not {self.seconds}")
        if self.sample_rate < 8000:
            problems.append("--sample-rate must be at least 8000 Hz")
        if self.locations_per_scene < 2:
            problems.append("locations_per_scene must be at least 2")
        if not self.devices or self.devices[0] != REFERENCE_DEVICE:
            problems.append(f"devices must start with the reference device {REFERENCE_DEVICE!r}")
        unknown = [d for d in self.devices + self.unseen if d not in DEVICE_PROFILES]
        if set(self.unseen) & set(self.devices):
            problems.append(f"devices {sorted(set(self.unseen) & set(self.devices))} cannot be both seen and unseen")
        if unknown:
            problems.append(f"devices {unknown} have no profile (known: {sorted(DEVICE_PROFILES)})")
        if problems:
            raise AscError("; ".join(problems))

    @property
    def train_segments(self) -> int:
        """A segments per scene in train locations: two thirds, as the real fold (at least one each side)."""
        return max(1, min(self.segments_per_scene - 1, round(self.segments_per_scene * 2 / 3)))

    @property
    def train_parallel(self) -> int:
        """Parallel groups per scene in train: half, as in the real fold 1 (540 B clips in train, 540 in
        evaluate). With the defaults B and C are 10% each of the training clips (real fold 1: 5%) and
        every training location holds 2 parallel groups, so that the validation protocol's held-out
        locations hold 20 clips of B and of C."""
        return self.parallel_per_scene // 2


# --------------------------------------------------------------------------------------------------
# Scenes: what is heard. Levels in dBFS RMS of device A's recording; rates in events per second.
# The pairs bus / tram / metro, street_traffic / street_pedestrian / public_square and airport /
# shopping_mall / metro_station share most ingredients and differ in colour, level and reverberation,
# as the real classes are confused with each other.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneProfile:
    level_db: float  # RMS of the clip on device A
    slope_db_per_octave: float  # background colour (re 1 kHz)
    bumps: tuple[tuple[float, float, float], ...]  # (centre Hz, width octaves, gain dB) on the background
    modulation: tuple[float, float]  # background amplitude modulation (rate Hz, depth 0..1)
    rt60: float  # seconds
    events: dict = field(default_factory=dict)  # event kind -> rate per second (relative level in EVENT_LEVELS)
    hum: tuple[float, float] | None = None  # (fundamental Hz, level dB re background) engine / motor hum
    music: float | None = None  # level dB re background of a sequence of harmonic notes


SCENE_PROFILES: dict[str, SceneProfile] = {
    "airport": SceneProfile(-28, -4.0, ((500, 1.5, 6), (4000, 1.0, -4)), (0.05, 0.2), 1.6,
                            {"voice": 0.9, "chime": 0.04, "passby": 0.03, "impulse": 0.3}),
    "bus": SceneProfile(-24, -6.0, ((80, 1.0, 12), (1500, 1.5, -3)), (0.2, 0.3), 0.45,
                        {"rumble": 0.35, "voice": 0.25, "impulse": 0.2, "beep": 0.03}, hum=(45, 6)),
    "metro": SceneProfile(-20, -5.0, ((150, 1.2, 10), (2000, 1.0, 3)), (0.1, 0.4), 0.5,
                          {"squeal": 0.08, "rumble": 0.5, "voice": 0.1, "beep": 0.02}, hum=(70, 3)),
    "metro_station": SceneProfile(-27, -4.0, ((400, 2.0, 4), (3000, 1.0, -2)), (0.05, 0.3), 1.8,
                                  {"voice": 0.45, "chime": 0.08, "passby": 0.04, "squeal": 0.03, "impulse": 0.4}),
    "park": SceneProfile(-38, -7.0, ((4000, 1.0, 6), (150, 1.0, 4)), (0.1, 0.4), 0.1,
                         {"chirp": 1.5, "voice": 0.06, "passby": 0.02}),
    "public_square": SceneProfile(-30, -5.0, ((600, 2.0, 3),), (0.1, 0.2), 0.6,
                                  {"voice": 0.5, "impulse": 0.6, "passby": 0.1, "chirp": 0.2}),
    "shopping_mall": SceneProfile(-28, -4.0, ((350, 1.5, 5), (2500, 1.0, 2)), (0.05, 0.1), 1.3,
                                  {"voice": 0.6, "impulse": 0.3, "beep": 0.02}, music=0.0),
    "street_pedestrian": SceneProfile(-29, -5.0, ((250, 1.5, 4),), (0.1, 0.2), 0.4,
                                      {"voice": 0.6, "impulse": 1.2, "passby": 0.05}),
    "street_traffic": SceneProfile(-22, -6.0, ((100, 1.5, 10), (1000, 2.0, 2)), (0.15, 0.5), 0.2,
                                   {"passby": 0.35, "rumble": 0.2, "beep": 0.03, "impulse": 0.05}),
    "tram": SceneProfile(-24, -5.0, ((200, 1.5, 8), (1200, 1.0, 2)), (0.15, 0.3), 0.5,
                         {"squeal": 0.1, "chime": 0.05, "rumble": 0.3, "voice": 0.2}, hum=(55, 0)),
}

# Events come EVENT_DENSITY times as often as the profiles' rates, so that a 3 s clip holds several:
# what identifies a scene once mean subtraction has removed its long-term spectrum.
EVENT_DENSITY = 1.5
EVENT_LEVELS = {  # dB of an event's RMS over its duration relative to the background RMS
    "voice": 9, "impulse": 15, "chirp": 9, "passby": 11, "chime": 11, "beep": 7, "squeal": 7, "rumble": 9,
}


# --------------------------------------------------------------------------------------------------
# Devices: how it is heard. Gains in dB; frequencies in Hz; levels in dBFS (RMS unless named a peak).
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dynamics:
    """A feed-forward dynamics processor: a phone's dynamic range compressor or automatic gain control.

    The level is the RMS over ``window_ms`` blocks; the static curve asks for
    ``(1 / ratio - 1) * (level - threshold_db)`` dB, bounded to ``[min_gain_db, max_gain_db]``: a
    compressor (ratio 2-4, max_gain_db 0) lowers only what exceeds the threshold; an AGC (a large
    ratio, max_gain_db > 0) steers every passage towards the threshold, raising quiet ones. The gain
    then moves towards that target with a one-pole smoother, ``attack_ms`` while it falls and
    ``release_ms`` while it rises, so it follows an event that lasts longer than the attack.
    """

    threshold_db: float
    ratio: float
    attack_ms: float
    release_ms: float
    max_gain_db: float = 0.0
    min_gain_db: float = -40.0
    makeup_db: float = 0.0
    window_ms: float = 10.0

    def gain_db(self, level_db: np.ndarray, block_ms: float, threshold_shift_db: float = 0.0) -> np.ndarray:
        """The smoothed gain, per block, for the block levels ``level_db``."""
        target = np.clip((1 / self.ratio - 1) * (level_db - self.threshold_db - threshold_shift_db),
                         self.min_gain_db, self.max_gain_db)
        attack, release = math.exp(-block_ms / self.attack_ms), math.exp(-block_ms / self.release_ms)
        # Written out: the smoother's coefficient depends on the direction the gain moves, which no
        # linear filter (scipy.signal.lfilter) expresses. Blocks of 10 ms: 300 steps for a 3 s clip.
        out = np.empty_like(target)
        gain = float(target[0])
        for i, want in enumerate(target.tolist()):
            coefficient = attack if want < gain else release
            gain = coefficient * gain + (1 - coefficient) * want
            out[i] = gain
        return out + self.makeup_db

    def __call__(self, y: np.ndarray, sr: int, threshold_shift_db: float = 0.0) -> np.ndarray:
        hop = max(1, int(sr * self.window_ms / 1000))
        blocks = -(-len(y) // hop)
        padded = np.zeros(blocks * hop, dtype=np.float32)
        padded[: len(y)] = y
        level_db = 10 * np.log10(np.mean(padded.reshape(blocks, hop) ** 2, axis=1, dtype=np.float64) + 1e-12)
        gain_db = self.gain_db(level_db, 1000 * hop / sr, threshold_shift_db)
        centres = np.arange(blocks) * hop + hop / 2
        return y * (10 ** (np.interp(np.arange(len(y)), centres, gain_db) / 20)).astype(np.float32)


@dataclass(frozen=True)
class DeviceProfile:
    """One recording device, in the order the sound meets it: the acoustic and analogue response
    (the device impulse response), the microphone's and preamplifier's self-noise, the converter's
    clipping, then the phone's dynamics processing. Device A is linear and quiet."""

    low_cut: tuple[float, int] | None  # (corner Hz, Butterworth order): roll-off of 6 dB/octave per order
    peaks: tuple[tuple[float, float, float], ...]  # (centre Hz, Q, gain dB): resonances (+) and notches (-)
    high_cut: tuple[float, int] | None  # (corner Hz, order); a steep one is the band limit
    gain_db: float  # analogue sensitivity relative to device A (sets how hard the clip and the dynamics work)
    noise_db: float  # self-noise, dBFS RMS over the whole band, added after the response
    noise_low_db: float = 0.0  # extra self-noise below ~200 Hz (1/f noise, handling rumble)
    tilt_db_per_octave: float = 0.0  # broad brightness (+) or darkness (-) re 1 kHz, from 125 Hz to 16 kHz
    clip_dbfs: float | None = None  # the converter's full scale at this gain: hard clipping above it
    dynamics: Dynamics | None = None  # the phone's DRC or AGC, after the converter
    # How one recording differs from the next (the phone held, pocketed or placed differently), as
    # standard deviations: dB of tilt across the band and of change in each peak (centres move by a
    # tenth as many octaves); dB of sensitivity (moves the clip and the dynamics' operating point);
    # dB of self-noise; dB of the dynamics' threshold.
    variation_db: float = 0.0
    gain_variation_db: float = 0.0
    noise_variation_db: float = 0.0
    threshold_variation_db: float = 0.0


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    # Soundman OKM II binaural microphones into a Zoom F8: 20 Hz - 20 kHz within a dB, a quiet recorder.
    "a": DeviceProfile(low_cut=(15, 1), peaks=(), high_cut=(21000, 2), gain_db=0.0, noise_db=-96),
    # Samsung Galaxy S7-like: bass roll-off, a presence resonance, a port notch, bright (+3 dB per
    # octave), a band limit near 12 kHz; 6 dB more sensitive than A with less headroom, so loud
    # events clip; a fast 2:1 DRC.
    "b": DeviceProfile(low_cut=(120, 2), peaks=((2500, 1.2, 6.0), (6500, 3.0, -15.0), (350, 1.0, -3.0)),
                       high_cut=(12000, 6), gain_db=6.0, tilt_db_per_octave=3.0, noise_db=-74, noise_low_db=10.0,
                       clip_dbfs=-3.0,
                       dynamics=Dynamics(threshold_db=-30.0, ratio=2.0, attack_ms=5.0, release_ms=80.0, makeup_db=3.0),
                       variation_db=3.0, gain_variation_db=3.0, noise_variation_db=2.0, threshold_variation_db=2.0),
    # iPhone SE-like: high-pass near 200 Hz, low-mid resonance, a dip above 4 kHz, dark (-3 dB per
    # octave), a band limit near 9 kHz; noisier, and an AGC that pulls every passage towards
    # -26 dBFS within +-8 dB, fast enough (20 ms down, 300 ms up) to duck under a voice or a
    # pass-by and lift the pauses.
    "c": DeviceProfile(low_cut=(220, 3), peaks=((1200, 1.5, 7.0), (4500, 2.0, -12.0), (9000, 2.0, 5.0)),
                       high_cut=(9000, 6), gain_db=3.0, tilt_db_per_octave=-3.0, noise_db=-70, noise_low_db=6.0,
                       dynamics=Dynamics(threshold_db=-26.0, ratio=20.0, attack_ms=20.0, release_ms=300.0,
                                         max_gain_db=8.0, min_gain_db=-8.0),
                       variation_db=3.0, gain_variation_db=3.0, noise_variation_db=2.0, threshold_variation_db=2.0),
    # Devices never heard in training (DCASE 2020 Task 1A's unseen s4-s6): they record only the
    # evaluation split's parallel segments. Responses and dynamics unlike B's and C's.
    # s1, a cheap headset or conference microphone: a telephone-like band (400 Hz - 6.5 kHz), a
    # presence peak at 3.5 kHz, a dip at 1.5 kHz, a hard 4:1 limiter.
    "s1": DeviceProfile(low_cut=(400, 2), peaks=((3500, 1.0, 8.0), (1500, 1.5, -10.0)), high_cut=(6500, 8),
                        gain_db=0.0, noise_db=-68, noise_low_db=3.0, clip_dbfs=-1.0,
                        dynamics=Dynamics(threshold_db=-20.0, ratio=4.0, attack_ms=2.0, release_ms=50.0),
                        variation_db=2.0, gain_variation_db=2.0, noise_variation_db=2.0, threshold_variation_db=2.0),
    # s2, a tablet or action camera with a wind filter: a boomy 180 Hz resonance, a broad dip at 2.5 kHz,
    # bright (+4 dB per octave) up to 15 kHz, a slow automatic gain control.
    "s2": DeviceProfile(low_cut=(80, 1), peaks=((180, 1.0, 8.0), (2500, 0.8, -9.0)), high_cut=(15000, 4),
                        gain_db=-4.0, tilt_db_per_octave=4.0, noise_db=-80, noise_low_db=12.0,
                        dynamics=Dynamics(threshold_db=-22.0, ratio=10.0, attack_ms=50.0, release_ms=800.0,
                                          max_gain_db=12.0, min_gain_db=-12.0),
                        variation_db=2.0, gain_variation_db=2.0, noise_variation_db=2.0, threshold_variation_db=2.0),
}


@dataclass(frozen=True)
class Take:
    """One recording's draw of its device's variation (all zero: the device's nominal behaviour)."""

    gain_db: float = 0.0
    noise_db: float = 0.0
    threshold_db: float = 0.0


def draw_take(device: str, rng: np.random.Generator) -> Take:
    profile = DEVICE_PROFILES[device]
    return Take(gain_db=rng.normal(0, profile.gain_variation_db) if profile.gain_variation_db else 0.0,
                noise_db=rng.normal(0, profile.noise_variation_db) if profile.noise_variation_db else 0.0,
                threshold_db=rng.normal(0, profile.threshold_variation_db) if profile.threshold_variation_db else 0.0)


def device_response_db(device: str, frequencies: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gain of ``device`` in dB at ``frequencies`` (Hz); with ``rng``, one recording's variation of it.

    Butterworth magnitudes for the roll-offs and Lorentzian bumps (peak gain at the centre,
    bandwidth centre / Q) for resonances and notches: smooth in frequency, so the impulse response
    is short.
    """
    profile = DEVICE_PROFILES[device]
    f = np.maximum(np.asarray(frequencies, dtype=np.float64), 1e-3)
    gain_db = profile.gain_db + profile.tilt_db_per_octave * np.clip(np.log2(f / 1000.0), -3, 4)
    vary = rng is not None and profile.variation_db > 0
    if vary:  # a tilt of +-variation_db between 100 Hz and 10 kHz
        gain_db += rng.normal(0, profile.variation_db) * np.clip(np.log10(f / 1000.0), -1, 1)
    if profile.low_cut is not None:
        fc, order = profile.low_cut
        gain_db -= 10 * np.log10(1 + (fc / f) ** (2 * order))
    if profile.high_cut is not None:
        fc, order = profile.high_cut
        gain_db -= 10 * np.log10(1 + (f / fc) ** (2 * order))
    for centre, q, peak_db in profile.peaks:
        if vary:
            centre *= 2 ** rng.normal(0, profile.variation_db / 30)
            peak_db += rng.normal(0, profile.variation_db)
        gain_db += peak_db / (1 + ((f - centre) / (centre / q / 2)) ** 2)
    return gain_db


@lru_cache(maxsize=32)
def device_response(device: str, n_fft: int, sample_rate: int) -> np.ndarray:
    """Magnitude response of ``device`` on the ``n_fft // 2 + 1`` rFFT bins (zero phase), float32."""
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    return (10 ** (device_response_db(device, f) / 20)).astype(np.float32)


def recording_response(device: str, n_fft: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One recording's magnitude response on the rFFT bins: :func:`device_response` varied by ``rng``.

    Evaluated on a 4096-point grid and interpolated: the response is smooth, and evaluating it on
    every one of ~300k bins for every clip would cost more than the FFTs.
    """
    if DEVICE_PROFILES[device].variation_db <= 0:
        return device_response(device, n_fft, sample_rate)
    grid = np.linspace(0, sample_rate / 2, 4096)
    gain_db = np.interp(np.fft.rfftfreq(n_fft, 1.0 / sample_rate), grid, device_response_db(device, grid, rng))
    return (10 ** (gain_db / 20)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------------
def _rng(*keys) -> np.random.Generator:
    """A generator seeded from strings and ints: the same keys give the same stream in any process."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


@dataclass(frozen=True)
class Location:
    """One recording location: its scene's profile as drawn for this place."""

    scene: str
    city: str
    location: str
    split: str
    level_db: float
    slope: float
    bumps: tuple
    rt60: float
    event_scale: float
    hum_scale: float


def draw_location(scene: str, city: str, location: str, split: str, seed: int) -> Location:
    """Perturb the scene profile for one place (level, colour, reverberation, how busy, hum pitch)."""
    base = SCENE_PROFILES[scene]
    rng = _rng(seed, "location", scene, city, location)
    bumps = tuple((c * 2 ** rng.uniform(-0.25, 0.25), w, g + rng.uniform(-2.5, 2.5)) for c, w, g in base.bumps)
    return Location(
        scene=scene, city=city, location=location, split=split,
        level_db=base.level_db + rng.uniform(-4, 4),
        slope=base.slope_db_per_octave + rng.uniform(-1.0, 1.0),
        bumps=bumps,
        rt60=base.rt60 * 2 ** rng.uniform(-0.6, 0.6),
        event_scale=2 ** rng.uniform(-0.8, 0.8),
        hum_scale=2 ** rng.uniform(-0.25, 0.25),
    )


def _envelope_db(f: np.ndarray, slope: float, bumps) -> np.ndarray:
    octaves = np.log2(np.maximum(f, 20.0) / 1000.0)
    db = slope * octaves
    for centre, width, gain in bumps:
        db += gain * np.exp(-0.5 * ((octaves - math.log2(centre / 1000.0)) / (width / 2)) ** 2)
    return db


@lru_cache(maxsize=256)
def _envelope(size: int, sr: int, slope: float, bumps) -> np.ndarray:
    """The amplitude envelope of :func:`_envelope_db` on the rFFT bins of ``size`` (cached: a place's
    background has the same envelope in every segment)."""
    f = np.fft.rfftfreq(size, 1.0 / sr).astype(np.float32)
    return (10 ** (_envelope_db(f, slope, bumps) / 20)).astype(np.float32)


def _shaped_noise(rng, n: int, sr: int, slope: float, bumps, size: int | None = None) -> np.ndarray:
    """Gaussian noise of ``n`` samples with a spectral envelope, unit RMS.

    Made in the frequency domain at ``size`` samples (default: the next power of two; pocketfft
    caches one plan per length, and random lengths would make a new plan every time), then cut to ``n``.
    """
    size = size or 1 << max(n - 1, 1).bit_length()
    re = rng.standard_normal(size // 2 + 1, dtype=np.float32)
    im = rng.standard_normal(size // 2 + 1, dtype=np.float32)
    x = scipy.fft.irfft((re + 1j * im) * _envelope(size, sr, slope, bumps), size)[:n]
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def _hann(n: int) -> np.ndarray:
    return np.hanning(max(n, 2)).astype(np.float32)


def _event(kind: str, rng: np.random.Generator, sr: int, longest: int) -> np.ndarray:
    """One event of ``kind``, unit RMS over its length, at most ``longest`` samples (the middle of a
    longer one)."""
    if kind == "voice":  # a syllable: harmonic complex through two formants
        n = int(sr * rng.uniform(0.15, 0.5))
        t = np.arange(n, dtype=np.float32) / sr
        f0 = rng.uniform(95, 250) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        phase = (2 * np.pi * np.cumsum(f0) / sr).astype(np.float32)  # float32 sines: the voice is the costliest event
        formants = rng.choice(np.array([[700, 1200], [400, 2000], [300, 900], [500, 1700], [600, 1000]]))
        k = np.arange(1, 16, dtype=np.float32)[:, None]
        fk = k * f0.mean()
        amp = sum(np.exp(-0.5 * ((fk - fm) / 150.0) ** 2) for fm in formants) + 0.05
        x = (amp * np.sin(k * phase)).sum(0) * _hann(n)
    elif kind == "impulse":  # footstep, door, luggage: a short decaying broadband burst
        n = int(sr * rng.uniform(0.03, 0.09))
        x = rng.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / (sr * rng.uniform(0.004, 0.02)))
        x = np.diff(x, prepend=0.0) if rng.random() < 0.5 else x
    elif kind == "chirp":  # bird: a fast downward or upward sweep
        n = int(sr * rng.uniform(0.05, 0.25))
        f1, f2 = rng.uniform(2000, min(8000, sr / 2.5), size=2)
        f = np.linspace(f1, f2, n, dtype=np.float32)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) * _hann(n)
    elif kind in ("passby", "rumble"):  # car / train pass-by, low rumble: a swell of low-passed noise
        seconds = rng.uniform(2, 6) if kind == "passby" else rng.uniform(0.5, 2)
        n = int(sr * seconds)
        corner = rng.uniform(300, 1500) if kind == "passby" else rng.uniform(60, 200)
        kept = min(n, longest)
        x = _shaped_noise(rng, kept, sr, -3.0, ((round(corner, -1), 2.0, 12.0),))
        x *= np.exp(-0.5 * ((np.arange(kept) + (n - kept) / 2 - n / 2) / (n / 6)) ** 2).astype(np.float32)
    elif kind in ("chime", "beep"):  # announcement chime (2-3 notes) or a single beep
        notes = rng.integers(2, 4) if kind == "chime" else 1
        parts = []
        for _ in range(notes):
            n = int(sr * rng.uniform(0.12, 0.45))
            t = np.arange(n, dtype=np.float32) / sr
            f0 = rng.uniform(400, 1800)
            tone = np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(4 * np.pi * f0 * t)
            parts.append(tone * np.exp(-t / rng.uniform(0.08, 0.3)))
        x = np.concatenate(parts)
    elif kind == "squeal":  # brake squeal: a high tone with vibrato
        n = int(sr * rng.uniform(0.3, 1.5))
        t = np.arange(n, dtype=np.float32) / sr
        f = rng.uniform(2500, min(7000, sr / 2.5)) * (1 + 0.01 * np.sin(2 * np.pi * 6 * t))
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) * _hann(n)
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    x = x.astype(np.float32)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _harmonic_tone(rng, n: int, sr: int, f0: float, harmonics: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / sr
    drift = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(f0 * drift, dtype=np.float64).astype(np.float32) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def _music(rng, n: int, sr: int) -> np.ndarray:
    """Background music: a sequence of harmonic notes on a pentatonic scale."""
    out = np.zeros(n, dtype=np.float32)
    start, root = 0, rng.uniform(180, 330)
    while start < n:
        length = int(sr * rng.choice([0.25, 0.5, 0.75]))
        length = min(length, n - start)
        f0 = root * 2 ** (rng.choice([0, 2, 4, 7, 9, 12]) / 12)
        t = np.arange(length, dtype=np.float32) / sr
        note = sum(np.sin(2 * np.pi * k * f0 * t) * 0.6**k for k in range(1, 5))
        out[start:start + length] = note * np.exp(-t / 0.4)
        start += length
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def dry_scene(place: Location, segment: str, n: int, sr: int, seed: int, size: int | None = None) -> np.ndarray:
    """The sound at the place, before the room and the microphone: ``n`` samples, background RMS 1
    (its noise made at ``size`` samples: one FFT length for every segment of a set)."""
    profile = SCENE_PROFILES[place.scene]
    rng = _rng(seed, "segment", place.scene, place.city, place.location, segment)
    x = _shaped_noise(rng, n, sr, place.slope, place.bumps, size)
    rate, depth = profile.modulation
    t = np.arange(n, dtype=np.float32) / sr
    x *= 1 + depth * np.sin(2 * np.pi * rate * 2 ** rng.uniform(-1, 1) * t + rng.uniform(0, 2 * np.pi))
    if profile.hum is not None:
        f0, level = profile.hum
        x += 10 ** (level / 20) * _harmonic_tone(rng, n, sr, f0 * place.hum_scale, 6)
    if profile.music is not None:
        x += 10 ** ((profile.music + rng.uniform(-6, 3)) / 20) * _music(rng, n, sr)
    for kind, rate in sorted(profile.events.items()):
        for _ in range(rng.poisson(EVENT_DENSITY * rate * place.event_scale * n / sr)):
            event = _event(kind, rng, sr, n)[: n]
            start = rng.integers(0, n - len(event) + 1)
            x[start:start + len(event)] += 10 ** ((EVENT_LEVELS[kind] + rng.uniform(-8, 4)) / 20) * event
    return x


def one_pole_lowpass(x: np.ndarray, sr: int, corner: float) -> np.ndarray:
    """``x`` through a one-pole low-pass (``y[i] = (1 - p) x[i] + p y[i - 1]``), applied in the
    frequency domain with enough padding for its tail: scipy.signal.lfilter does the same, but
    importing scipy.signal costs each synthesis process ~1.5 s."""
    pole = math.exp(-2 * math.pi * corner / sr)
    size = scipy.fft.next_fast_len(len(x) + int(20 * sr / (2 * math.pi * corner)), real=True)  # 20 time constants
    f = np.fft.rfftfreq(size, 1.0 / sr)
    response = (1 - pole) / (1 - pole * np.exp(-2j * np.pi * f / sr))
    return scipy.fft.irfft(scipy.fft.rfft(x, size) * response, size)[: len(x)]


def room_response(rt60: float, n_fft: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """rFFT of a room impulse response: the direct sound plus an exponentially decaying noise tail.

    The tail's high band (one-pole split near 2 kHz) decays twice as fast as its low band (air and
    surfaces absorb high frequencies); the tail's energy relative to the direct sound grows with
    RT60, as in bigger, harder rooms.
    """
    length = min(int(sr * rt60 * 1.2), n_fft // 4)
    t = np.arange(length, dtype=np.float32) / sr
    low = one_pole_lowpass(rng.standard_normal(length), sr, 2000)
    high = rng.standard_normal(length) - one_pole_lowpass(rng.standard_normal(length), sr, 2000)
    tail = low * np.exp(-6.9 * t / rt60) + high * np.exp(-6.9 * t / (rt60 / 2))
    direct_to_reverb_db = 6 + 8 * math.log10(1 + rt60 * 4)
    tail *= 10 ** (-direct_to_reverb_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    response = np.zeros(n_fft, dtype=np.float32)
    response[0] = 1.0
    delay = int(sr * 0.005)  # the tail starts 5 ms after the direct sound
    response[delay:delay + length] += tail[: n_fft - delay]
    return scipy.fft.rfft(response)


@lru_cache(maxsize=128)
def location_room(place: Location, n_fft: int, sr: int, seed: int) -> np.ndarray:
    """The room response of ``place`` (every segment of a place is heard in the same room): computed
    once per place and process."""
    return room_response(place.rt60, n_fft, sr, _rng(seed, "room", place.scene, place.city, place.location))


def capture(spectrum: np.ndarray, device: str, start: int, n: int, sr: int, rng: np.random.Generator,
            take: Take = Take()) -> np.ndarray:
    """The linear part of a recording: the sound whose rFFT is ``spectrum`` through this recording's
    response of ``device`` (the device impulse response, with this take's sensitivity), samples
    ``start:start + n``."""
    n_fft = 2 * (len(spectrum) - 1)
    response = recording_response(device, n_fft, sr, rng) * np.float32(10 ** (take.gain_db / 20))
    return scipy.fft.irfft(spectrum * response, n_fft)[start:start + n]


@lru_cache(maxsize=8)
def _self_noise_shape(size: int, sr: int, low_db: float) -> np.ndarray:
    """Amplitude on the rFFT bins of white noise plus a one-pole low-pass (200 Hz) of it ``low_db``
    stronger: the spectrum of a microphone's white and 1/f-like noise."""
    f = np.fft.rfftfreq(size, 1.0 / sr)
    return np.sqrt(1 + 10 ** (low_db / 10) / (1 + (f / 200.0) ** 2)).astype(np.float32)


def self_noise(device: str, n: int, sr: int, rng: np.random.Generator, take: Take = Take()) -> np.ndarray:
    """The microphone's and preamplifier's noise, ``n`` samples at the profile's level (dBFS RMS):
    white, plus 1/f-like noise ``noise_low_db`` stronger below ~200 Hz (made in the frequency domain)."""
    profile = DEVICE_PROFILES[device]
    sigma = np.float32(10 ** ((profile.noise_db + take.noise_db) / 20))
    if not profile.noise_low_db:
        return sigma * rng.standard_normal(n, dtype=np.float32)
    size = scipy.fft.next_fast_len(n, real=True)
    half = size // 2 + 1
    spectrum = rng.standard_normal(half, dtype=np.float32) + 1j * rng.standard_normal(half, dtype=np.float32)
    noise = scipy.fft.irfft(spectrum * _self_noise_shape(size, sr, profile.noise_low_db), size)[:n]
    return (noise * (sigma / (np.sqrt(np.mean(noise**2)) + 1e-12))).astype(np.float32)


def finish(y: np.ndarray, device: str, sr: int, rng: np.random.Generator, take: Take = Take()) -> np.ndarray:
    """The rest of a recording after the linear response: self-noise, the converter's clipping, the
    phone's dynamics, then the file's full scale."""
    profile = DEVICE_PROFILES[device]
    y = y + self_noise(device, len(y), sr, rng, take)
    if profile.clip_dbfs is not None:
        limit = 10 ** (profile.clip_dbfs / 20)
        y = np.clip(y, -limit, limit)
    if profile.dynamics is not None:
        y = profile.dynamics(y, sr, take.threshold_db)
    return np.clip(y, -1.0, 1.0 - 2.0**-23).astype(np.float32)


PREROLL_MAX_SECONDS = 1.0  # reverberation tails longer than this are cut (at RT60 2 s the tail is 30 dB down)
PEAK_DBFS = -6.0  # device A's loudest sample at most


def fft_length(config: SynthConfig) -> int:
    """The one FFT length a config's clips are made with (a fast length, planned once per process)."""
    n = int(round(config.seconds * config.sample_rate))
    length = scipy.fft.next_fast_len(n + 2 * int(PREROLL_MAX_SECONDS * config.sample_rate), real=True)
    while length % 2:  # capture() recovers the length from an rFFT's size, which needs it even
        length = scipy.fft.next_fast_len(length + 1, real=True)
    return length


def synthesize_group(place: Location, segment: str, devices: tuple[str, ...], config: SynthConfig) -> dict[str, np.ndarray]:
    """The segment as recorded by each of ``devices`` at the same moment: ``{device: samples}``."""
    sr = config.sample_rate
    n = int(round(config.seconds * sr))
    n_fft = fft_length(config)
    # Start the scene before the clip, so that the reverberation is built up at its first sample.
    preroll = min(int(sr * place.rt60 * 1.2), int(PREROLL_MAX_SECONDS * sr))
    dry = dry_scene(place, segment, n + preroll, sr, config.seed,
                    scipy.fft.next_fast_len(n + int(PREROLL_MAX_SECONDS * sr), real=True))
    spectrum = scipy.fft.rfft(dry, n_fft) * location_room(place, n_fft, sr, config.seed)
    # Scale to the place's level on device A (before A's own, nearly flat, response). Parseval's
    # theorem gives the RMS without going back to the time domain.
    power = (2 * np.vdot(spectrum, spectrum).real - abs(spectrum[0]) ** 2) / n_fft**2
    level_db = place.level_db + _rng(config.seed, "level", segment).uniform(-2, 2)
    spectrum *= np.float32(10 ** (level_db / 20) / (np.sqrt(power * n_fft / len(dry)) + 1e-12))
    # Headroom: the loudest moment on device A peaks at PEAK_DBFS (A is linear, so scale afterwards).
    rngs = {d: _rng(config.seed, "device", d, segment) for d in devices}
    takes = {d: draw_take(d, rngs[d]) for d in devices}
    reference = capture(spectrum, REFERENCE_DEVICE, preroll, n, sr, rngs[REFERENCE_DEVICE])
    scale = np.float32(min(1.0, 10 ** (PEAK_DBFS / 20) / (np.abs(reference).max() + 1e-12)))
    spectrum *= scale
    return {
        d: finish(reference * scale if d == REFERENCE_DEVICE else capture(spectrum, d, preroll, n, sr, rngs[d], takes[d]),
                  d, sr, rngs[d], takes[d])
        for d in devices
    }


# --------------------------------------------------------------------------------------------------
# The dataset plan and the writer
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    place: Location
    segment: str
    devices: tuple[str, ...]

    def filename(self, device: str) -> str:
        p = self.place
        return f"audio/{p.scene}-{p.city}-{p.location}-{self.segment}-{device}.wav"


def plan(config: SynthConfig) -> list[Segment]:
    """Which segments exist, where they were recorded, which split and which devices they have."""
    segments: list[Segment] = []
    location_id = segment_id = 0
    n_train_locations = max(1, round(config.locations_per_scene * 2 / 3))
    for s, scene in enumerate(SCENES):
        places = []
        for k in range(config.locations_per_scene):
            split = "train" if k < n_train_locations else "evaluate"
            city = CITIES[(s + k) % len(CITIES)]
            places.append(draw_location(scene, city, str(location_id), split, config.seed))
            location_id += 1
        # Segments go round-robin over the train locations and over the evaluate ones, two to one.
        n_train, n_parallel_train = config.train_segments, config.train_parallel
        by_split = {"train": [p for p in places if p.split == "train"],
                    "evaluate": [p for p in places if p.split == "evaluate"]}
        for split, count, n_parallel in (
            ("train", n_train, n_parallel_train),
            ("evaluate", config.segments_per_scene - n_train, config.parallel_per_scene - n_parallel_train),
        ):
            parallel = config.devices + (config.unseen if split == "evaluate" else ())
            for i in range(count):
                place = by_split[split][i % len(by_split[split])]
                devices = parallel if i < n_parallel else (REFERENCE_DEVICE,)
                segments.append(Segment(place, str(segment_id), devices))
                segment_id += 1
    return segments


def _write_segment(segment: Segment, config: SynthConfig, root: str) -> list[str]:
    audio = synthesize_group(segment.place, segment.segment, segment.devices, config)
    names = []
    for device, samples in audio.items():
        name = segment.filename(device)
        soundfile.write(os.path.join(root, name), samples, config.sample_rate, subtype="PCM_24")
        names.append(name)
    return names


def _write_tables(root: Path, segments: list[Segment]) -> None:
    rows = sorted(
        (seg.filename(d), seg.place.scene, f"{seg.place.city}-{seg.place.location}", d, seg.place.split)
        for seg in segments
        for d in seg.devices
    )
    setup = root / "evaluation_setup"
    setup.mkdir()
    with open(root / "meta.csv", "w") as f:
        f.write("filename\tscene_label\tidentifier\tsource_label\n")
        f.writelines(f"{name}\t{scene}\t{ident}\t{device}\n" for name, scene, ident, device, _ in rows)
    for split in ("train", "evaluate"):
        with open(setup / f"fold1_{split}.csv", "w") as f:
            f.write("filename\tscene_label\n")
            f.writelines(f"{r[0]}\t{r[1]}\n" for r in rows if r[4] == split)
    with open(setup / "fold1_test.csv", "w") as f:
        f.write("filename\n")
        f.writelines(f"{r[0]}\n" for r in rows if r[4] == "evaluate")


def write_dataset(out: str | Path, config: SynthConfig = SynthConfig(), workers: int | None = None,
                  progress: bool = False) -> Dataset:
    """Write the synthetic set to ``out`` and return it as read back by :func:`read_development`.

    The set is written into a temporary folder beside ``out`` and renamed into place at the end, so
    an interrupted run leaves nothing at ``out``. ``out`` must not exist or be an empty folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AscError(f"{out}: already exists and is not an empty folder; choose a new one")
    segments = plan(config)
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise AscError(f"{out}: cannot write here ({above} is a file)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise AscError(f"{out}: cannot write here ({exc.strerror or exc})") from None
    try:
        (tmp / "audio").mkdir()
        bar = show_progress(sum(len(s.devices) for s in segments), "synthesizing", "clip", progress)
        process_map(functools.partial(_write_segment, config=config, root=str(tmp)), segments,
                    lambda written: bar.update(len(written)), workers=workers if len(segments) >= 8 else 1)
        bar.close()
        _write_tables(tmp, segments)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_development(out)
