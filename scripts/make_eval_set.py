"""Build the evaluation set: real recordings with known scene categories, from Debian packages.

    python scripts/make_eval_set.py data/eval

Writes OUT/<category>/<clip>.wav and OUT/truth.csv (path, category, description, source, files): the category is
the clip's folder (``auditoryhum run OUT --class-from-folder``), the description the short text a scorer is asked
to match against the audio, source the Debian package and files the recordings the clip was made from, so every
clip can be traced and rebuilt. Recordings are picked by their names and folders (the game's "rain", "crowd05",
"default_grass_footstep"), never by what a model hears in them.

Clips are 1-10 s: a longer recording keeps its first 10 s; a short one is kept as it is, without looping. A few
sources are single short events (one footstep): a clip then plays every take of that event from one folder in
turn, 0.3 s apart, as a walk or a flock would. Shorter than 1 s after that: left out. Same packages, same bytes.

Packages (install with ``make apt``): lincity-ng-data, simutrans-pak64, 7kaa-data, etw-data, freeciv-data,
lugaru-data, minetest-data, scorched3d-data, sound-theme-freedesktop, oxygen-sounds, asterisk-core-sounds-en-wav;
espeak-ng and sox. 0ad-data, tuxpaint and openttd are kept out on purpose: they are left for an independent check.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

MAX_S, MIN_S, GAP_S = 10.0, 1.0, 0.3
SEQ_RATE = 22_050  # the takes of one sequence share a rate and channel count so that sox can join them

# Where each package keeps its sounds.
ROOTS = {
    "lincity-ng-data": "/usr/share/games/lincity-ng/sounds",
    "simutrans-pak64": "/usr/share/games/simutrans/pak/sound",
    "7kaa-data": "/usr/share/games/7kaa/SOUND",
    "etw-data": "/usr/share/games/etw",
    "freeciv-data": "/usr/share/games/freeciv",
    "lugaru-data": "/usr/share/games/lugaru/Sounds",
    "minetest-data": "/usr/share/games/minetest/games/minetest_game/mods",
    "scorched3d-data": "/usr/share/games/scorched3d/data/globalmods",
    "sound-theme-freedesktop": "/usr/share/sounds/freedesktop/stereo",
    "oxygen-sounds": "/usr/share/sounds",
    "asterisk-core-sounds-en-wav": "/usr/share/asterisk/sounds/en_US_f_Allison",
}
FOOTSTEPS = "default/sounds/default_{}_footstep.{}.ogg"
S3D_MISC, S3D_BOOM, APOC = "none/data/wav/misc/", "none/data/wav/explosions/", "apoc/data/wav/"

SENTENCES = [
    "Good evening and welcome to the news at six. Our top story tonight concerns the new railway line.",
    "Please take your seats, the lecture on medieval history will begin in five minutes.",
    "I called the office this morning but nobody answered, so I left a message with my number.",
    "Turn left at the next junction, then keep going straight until you reach the old church.",
]


@dataclass(frozen=True)
class Source:
    """One clip: the files of ``package`` it is made of (several: played in turn as one sequence)."""
    package: str
    files: tuple[str, ...]


def files(package: str, *names: str) -> list[Source]:
    """One clip per file."""
    return [Source(package, (name,)) for name in names]


def sequence(package: str, *names: str) -> Source:
    """One clip of several takes of the same event."""
    return Source(package, names)


# category: (description, clips). The description is what a scene recogniser would call the category.
CATEGORIES: dict[str, tuple[str, list[Source]]] = {
    "traffic": ("road traffic", [
        *files("lincity-ng-data", *(f"Trafic{level}{i}.wav" for level in ("High", "Low") for i in (1, 2, 3))),
        *files("simutrans-pak64", "bus.wav", "truck.wav"),
        *files("scorched3d-data", APOC + "misc/citysounds.wav"),
    ]),
    "birdsong": ("birdsong", [
        *files("scorched3d-data", *(S3D_MISC + f"birdchirp{i}.wav" for i in (1, 2, 4, 5, 6)),
               S3D_MISC + "birds1.wav", S3D_MISC + "birds2.wav"),
        *files("lugaru-data", "Hawk.ogg"),
    ]),
    "crowd": ("crowd cheering", [
        *files("etw-data", *(f"crowd/crowd{i:02d}.wav" for i in range(1, 7))),
        *files("lincity-ng-data", "SportsCroud1.wav", "SportsCroud2.wav", "SportsCroud3.wav"),
        *files("scorched3d-data", APOC + "misc/cheeringloop.wav"),
    ]),
    "water": ("flowing water", [
        *files("lincity-ng-data", *(f"Water{i}.wav" for i in (1, 3, 4, 5))),  # Water2.wav is Harbor3.wav
        *files("simutrans-pak64", "Water.wav"),
        *files("minetest-data", *(f"env_sounds/sounds/env_sounds_water.{i}.ogg" for i in range(1, 5))),
    ]),
    "harbour": ("harbour", [
        *files("lincity-ng-data", "Harbor1.wav", "Harbor2.wav"),
        *files("simutrans-pak64", "seagulls.wav", "boat-horn.wav"),
        *files("scorched3d-data", S3D_MISC + "oceanwaves.wav"),
        sequence("scorched3d-data", *(S3D_MISC + f"gull{i}.wav" for i in (1, 2, 4, 5))),
    ]),
    "fire": ("crackling fire", [
        *files("lincity-ng-data", "Fire1.wav", "Fire2.wav", "Fire3.wav"),
        *files("minetest-data", *(f"fire/sounds/fire_fire.{i}.ogg" for i in (1, 2, 3)),
               "fire/sounds/fire_large.ogg", "fire/sounds/fire_small.ogg"),
        *files("lugaru-data", "Fire.ogg"),
        *files("7kaa-data", "FIRE.WAV"),
    ]),
    "thunderstorm": ("thunderstorm", [
        *files("7kaa-data", "RAIN.WAV", "THUNDER.WAV"),
        *files("scorched3d-data", S3D_MISC + "rain.wav", S3D_MISC + "thunder.wav", S3D_MISC + "thunder2.wav",
               S3D_MISC + "thunder3.wav", APOC + "explosions/thunder.wav"),
    ]),
    "aircraft": ("aircraft", [
        *files("scorched3d-data", *(S3D_MISC + f"{name}.wav" for name in ("f16_1", "f16_2", "f18_1", "f18_2",
                                                                          "jet", "t38")),
               APOC + "misc/cessna.wav"),
        *files("simutrans-pak64", "planelow.wav", "comet-jet.wav"),
    ]),
    "train": ("train", [
        *files("lincity-ng-data", "RailTrain1.wav", "RailTrain2.wav", "RailTrain3.wav"),
        *files("simutrans-pak64", "steam.wav", "diesel.wav", "crossing.wav"),
    ]),
    "footsteps": ("footsteps", [
        *(sequence("minetest-data", *(FOOTSTEPS.format(ground, i) for i in range(1, takes + 1)))
          for ground, takes in (("grass", 3), ("gravel", 4), ("hard", 3), ("ice", 3), ("metal", 3), ("sand", 3),
                                ("snow", 5), ("water", 3))),
        sequence("lugaru-data", *(f"FootStep{ground}{i}.ogg" for ground in ("Grass", "Snow", "Stone")
                                  for i in (1, 2))),
    ]),
    "speech": ("speech", [
        *files("asterisk-core-sounds-en-wav", *(f"{name}.wav" for name in (
            "demo-instruct", "demo-congrats", "demo-echotest", "basic-pbx-ivr-main", "vm-options",
            "demo-abouttotry", "demo-moreinfo", "dir-intro"))),
        *files("espeak-ng", *SENTENCES),
    ]),
    "music": ("music", [
        *files("lugaru-data", "Music1Desert.ogg", "Music1Grass.ogg", "Music1Snow.ogg", "Music2.ogg", "Music3.ogg"),
        *files("etw-data", "music/back0.wav", "music/back9.wav"),
        *files("freeciv-data", "stdmusic/CullamBruce-Lockhart--Dawning_Fanfare.ogg"),
        *files("scorched3d-data", "none/data/music/mix3_loop1.ogg", "none/data/music/mix3_loop2.ogg"),
    ]),
    "explosion": ("explosion", [
        *files("scorched3d-data", *(S3D_BOOM + f"{name}.wav" for name in ("large", "medium", "small", "xlarge",
                                                                          "napalm", "tank"))),
        *files("freeciv-data", "stdsounds/LrgExpl.ogg", "stdsounds/SmlExpl.ogg"),
        *files("simutrans-pak64", "explosion.wav"),
        *files("lincity-ng-data", "RocketExplosion1.wav"),
        *files("minetest-data", "tnt/sounds/tnt_explode.ogg"),
    ]),
    "gunfire": ("gunfire", [
        *files("scorched3d-data", APOC + "shoot/machinegun.wav", APOC + "shoot/tripleshot.wav"),
        *files("freeciv-data", "stdsounds/MgHeavy.ogg", "stdsounds/LrgCan.ogg", "stdsounds/MedCan.ogg"),
        *files("etw-data", "snd/cannon.wav"),
    ]),
    "farm": ("farm animals", [
        *files("lincity-ng-data", *(f"{farm}{i}.wav" for farm in ("Farm", "OrganicFarm") for i in (1, 2, 3))),
        *files("scorched3d-data", *(APOC + f"misc/{name}.wav" for name in ("cows", "moo", "sheep", "rooster"))),
        *files("simutrans-pak64", "horse.wav"),
    ]),
    "construction": ("construction site", [
        *files("lincity-ng-data", "Build1.wav", "Build2.wav", "MonumentConstruction1.wav",
               "MonumentConstruction2.wav", "MonumentConstruction3.wav", "Raze2.wav", "Raze3.wav"),
        *files("simutrans-pak64", "buzzsaw.wav", "tree-cutting.wav"),
    ]),
    "alert": ("alert chime", [
        *files("sound-theme-freedesktop", "complete.oga", "phone-incoming-call.oga", "service-login.oga",
               "alarm-clock-elapsed.oga", "suspend-error.oga"),  # message-new-instant: Oxygen-Im-Message-In
        *files("oxygen-sounds", "Oxygen-Im-Message-In.ogg", "Oxygen-Im-New-Mail.ogg", "Oxygen-Sys-App-Message.ogg",
               "Oxygen-Im-Sms.ogg", "Oxygen-Sys-Warning.ogg"),
    ]),
}


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def paths(src: Source) -> list[Path]:
    return [Path(ROOTS[src.package]) / name for name in src.files]


def check_installed() -> None:
    missing = sorted({s.package for _, clips in CATEGORIES.values() for s in clips if s.package in ROOTS
                      and not all(p.is_file() for p in paths(s))})
    tools = [t for t in ("sox", "espeak-ng") if shutil.which(t) is None]
    if missing or tools:
        sys.exit(f"missing: {' '.join(missing + tools)} (install the Debian packages: make apt)")


def clip_name(src: Source, index: int, taken: set[str]) -> str:
    """package_file; a sequence: the start its files' names share, and _seq; the file's folder too if taken."""
    if src.package == "espeak-ng":
        return f"espeak{index + 1}"
    first = Path(src.files[0])
    stem = first.stem if len(src.files) == 1 else os.path.commonprefix([Path(f).stem for f in src.files])
    stem = stem.rstrip("._").replace(".", "_")
    short = {"sound-theme-freedesktop": "freedesktop"}.get(src.package, src.package.split("-")[0])
    name = f"{short}_{stem.removeprefix('Oxygen-')}" + ("_seq" if len(src.files) > 1 else "")
    if name in taken:
        name = f"{short}_{first.parts[0]}_{stem}"
    assert name not in taken, name
    return name


def render(src: Source, dest: Path, tmp: Path) -> None:
    """``dest``: 16-bit WAV, at most MAX_S seconds. -R: sox's repeatable mode (fixed dither seed)."""
    if src.package == "espeak-ng":
        raw = tmp / "speech.wav"
        run("espeak-ng", "-v", "en", "-w", str(raw), src.files[0])
        run("sox", "-R", str(raw), "-b", "16", str(dest), "trim", "0", str(MAX_S))
        return
    if len(src.files) == 1:
        run("sox", "-R", str(paths(src)[0]), "-b", "16", str(dest), "trim", "0", str(MAX_S))
        return
    takes = []
    for i, path in enumerate(paths(src)):
        takes.append(tmp / f"take{i}.wav")
        run("sox", "-R", str(path), "-r", str(SEQ_RATE), "-c", "1", "-b", "16", str(takes[-1]), "pad", "0", str(GAP_S))
    run("sox", "-R", *map(str, takes), str(dest), "trim", "0", str(MAX_S))


def build(out: Path) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for category, (description, clips) in CATEGORIES.items():
            (out / category).mkdir(parents=True, exist_ok=True)
            taken: set[str] = set()
            for i, src in enumerate(clips):
                taken.add(name := clip_name(src, i, taken))
                dest = out / category / f"{name}.wav"
                render(src, dest, Path(tmp))
                if sf.info(str(dest)).duration < MIN_S:
                    dest.unlink()
                    continue
                rows.append({"path": dest.relative_to(out).as_posix(), "category": category,
                             "description": description, "source": src.package,
                             "files": ";".join(src.files if src.package == "espeak-ng" else map(str, paths(src)))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    check_installed()
    if args.out.exists():
        shutil.rmtree(args.out)
    rows = build(args.out)
    with (args.out / "truth.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["path", "category", "description", "source", "files"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    counts = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
    print(f"{len(rows)} clips in {len(counts)} categories in {args.out}: "
          + ", ".join(f"{c} {n}" for c, n in counts.items()))


if __name__ == "__main__":
    main()
