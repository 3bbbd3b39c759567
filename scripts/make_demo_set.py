"""Build the demo / benchmark clip sets from real recordings shipped in Debian packages.

    python scripts/make_demo_set.py data/demo              # ~170 real clips + synthesised speech and mixes
    python scripts/make_demo_set.py data/bench --bench 600 # 600 clips of 10 s at 44.1 kHz, looped from real ones

Sources: lincity-ng-data (city ambiences: traffic, market, school, harbour...), simutrans-pak64 (bus, truck,
seagulls, forest, water...), espeak-ng speech, sox for mixing and looping.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf

LINCITY = Path("/usr/share/games/lincity-ng/sounds")
SIMUTRANS = Path("/usr/share/games/simutrans/pak/sound")
SENTENCES = [
    "Good morning, the next train to the city centre leaves from platform two.",
    "Please remember to bring your books to class tomorrow.",
    "The weather today will be sunny with a light breeze from the west.",
    "Could you pass me the salt and pepper, please?",
    "Welcome to the museum. Photography is not allowed in this room.",
    "Our flight is delayed by thirty minutes because of fog.",
]


def sources() -> list[Path]:
    found = sorted(LINCITY.glob("*.wav")) + sorted(SIMUTRANS.glob("*.wav"))
    if not found:
        sys.exit("no recordings found: install the Debian packages lincity-ng-data and simutrans-pak64 (make setup)")
    return found


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def demo(out: Path) -> int:
    for src in sources():
        family = "lincity" if src.is_relative_to(LINCITY) else "simutrans"
        (out / family).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, out / family / src.name)
    (out / "speech").mkdir(parents=True, exist_ok=True)
    for i, sentence in enumerate(SENTENCES):
        run("espeak-ng", "-w", str(out / "speech" / f"speech{i + 1}.wav"), sentence)
    (out / "mixes").mkdir(parents=True, exist_ok=True)
    for i, bed in enumerate(["TraficHigh1.wav", "MarketFull1.wav", "Harbor1.wav"]):
        # Speech over a city ambience at 22.05 kHz stereo: a realistic, harder case. sox mixes equal rates only.
        bed_22k = out / "mixes" / "bed.tmp.wav"
        run("sox", str(LINCITY / bed), "-r", "22050", str(bed_22k))
        run("sox", "-m", str(out / "speech" / f"speech{i + 1}.wav"), str(bed_22k), "-c", "2",
            str(out / "mixes" / f"speech_over_{Path(bed).stem}.wav"))
        bed_22k.unlink()
    return sum(1 for _ in out.rglob("*.wav"))


def bench(out: Path, count: int, seconds: float = 10.0, rate: int = 44_100) -> int:
    out.mkdir(parents=True, exist_ok=True)
    srcs = sources()
    for i in range(count):
        src = srcs[i % len(srcs)]
        # Loop the recording past the clip length; a different offset per copy keeps clips distinct.
        offset = (i // len(srcs)) * 0.37 % seconds
        repeats = math.ceil((seconds + offset) / sf.info(str(src)).duration)
        run("sox", str(src), "-r", str(rate), "-c", "1", "-b", "16", str(out / f"clip{i:05d}_{src.stem}.wav"),
            "repeat", str(repeats), "trim", f"{offset:.2f}", str(seconds))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--bench", type=int, metavar="N", help="build N 10-s clips for the throughput benchmark")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    n = bench(args.out, args.bench) if args.bench else demo(args.out)
    print(f"{n} clips in {args.out}")


if __name__ == "__main__":
    main()
