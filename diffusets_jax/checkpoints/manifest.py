"""`MANIFEST.json`: the size and SHA-256 of every file of a directory, checked when it is loaded.

Written last, after every listed file has been flushed and renamed into place, so a directory whose
manifest is present was complete when written; a file changed since (truncated, garbled, replaced)
fails `verify_manifest` with an IntegrityError naming it. A directory without a manifest (written
before manifests existed) is accepted as it is.

Format (JSON, sorted keys):

    {"format": "diffusets-jax-manifest/1",
     "files": {"vae.npz": {"size": 123456, "sha256": "<64 hex digits>"}, ...}}

SHA-256 is FIPS 180-4 (`hashlib.sha256`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from diffusets_jax.checkpoints.layout import atomic_write_text
from diffusets_jax.errors import IntegrityError, MissingFileError

MANIFEST_FILE = "MANIFEST.json"
FORMAT = "diffusets-jax-manifest/1"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, names: Iterable[str] | None = None) -> Path:
    """Write `directory/MANIFEST.json` for `names` (default: every regular file of `directory`
    except hidden ones and the manifest itself); atomic. Returns the manifest's path.

    Call it after the files are complete and renamed into place. Raises MissingFileError naming a
    listed file that does not exist.
    """
    directory = Path(directory)
    if names is None:
        names = [
            p.name
            for p in directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_FILE
        ]
    files = {}
    for name in sorted(set(names)):
        path = directory / name
        if not path.is_file():
            raise MissingFileError(f"{path} not found: cannot list it in {directory / MANIFEST_FILE}")
        files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    text = json.dumps({"format": FORMAT, "files": files}, indent=2, sort_keys=True) + "\n"
    return atomic_write_text(directory / MANIFEST_FILE, text)


def read_manifest(directory: str | Path) -> dict[str, dict] | None:
    """`{name: {"size", "sha256"}}` of `directory/MANIFEST.json`, or None if there is none.

    Raises IntegrityError if the manifest itself is unreadable.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {data.get('format')!r}")
        return {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise IntegrityError(f"{path} is not a readable manifest ({type(error).__name__}: {error})") from None


def verify_manifest(directory: str | Path, names: Iterable[str] | None = None) -> bool:
    """Check the files of `directory` against its manifest; False if it has none, True if all match.

    `names` limits the check to those files (each must be listed). Sizes are compared first (cheap),
    then SHA-256.

    Raises:
        IntegrityError: naming the first file that is missing, or whose size or SHA-256 differs.
    """
    directory = Path(directory)
    files = read_manifest(directory)
    if files is None:
        return False
    wanted = sorted(files) if names is None else list(names)
    for name in wanted:
        path = directory / name
        if name not in files:
            raise IntegrityError(f"{path} is not listed in {directory / MANIFEST_FILE}")
        if not path.is_file():
            raise IntegrityError(f"{path} is listed in {MANIFEST_FILE} but missing")
        size = path.stat().st_size
        if size != files[name]["size"]:
            raise IntegrityError(
                f"{path} has {size} bytes, its manifest says {files[name]['size']} (truncated or replaced)"
            )
    for name in wanted:
        if sha256_file(directory / name) != files[name]["sha256"]:
            raise IntegrityError(
                f"{directory / name}: SHA-256 differs from {MANIFEST_FILE} (the file is corrupt "
                "or was changed after it was written)"
            )
    return True
