"""Recordings shaped like the Free Spoken Digit Dataset from the keyword quickstart's espeak-ng digits: 8 kHz mono
int16 WAV, leading and trailing silence trimmed, every file in one folder named ``<digit>_spk<voice>_<n>.wav``,
listed by a ``file,label,split`` manifest. A stand-in for real 8 kHz digit recordings, to check that a recipe
runs on them unchanged but for the data keys:

    python benchmarks/fsdd_like.py --src data/speech-target --out /tmp/fsdd
    suite run recipes/quickstart/speech-keywords-whisper.yaml -s data.format=manifest \\
        -s data.root=/tmp/fsdd/manifest.csv --out runs/fsdd-whisper
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from suite.datasets.speech import trim
from suite.speech.data import load_audio

RATE = 8000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("data/speech-target"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/fsdd"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, lengths = [], []
    for split in ("train", "val"):
        for n, wav in enumerate(sorted((args.src / split).glob("*/*.wav"))):
            label = wav.parent.name
            audio = trim(load_audio(wav, RATE), RATE)
            pcm = np.clip(np.round(audio / max(1e-6, np.abs(audio).max()) * 0.9 * 32767), -32768, 32767)
            name = f"{label}_spk{n % 8}_{split}{n}.wav"
            sf.write(args.out / name, pcm.astype(np.int16), RATE, subtype="PCM_16")
            rows.append((name, label, split))
            lengths.append(len(audio) / RATE)
    with open(args.out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("file", "label", "split"))
        writer.writerows(rows)
    print(f"{len(rows)} clips in {args.out}, {min(lengths):.2f}-{max(lengths):.2f} s at {RATE} Hz")


if __name__ == "__main__":
    main()
