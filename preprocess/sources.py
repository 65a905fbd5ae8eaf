"""Find the files under ingest sources — folders, single files, .zip archives — without escaping them.

Symlinks that point out of a source folder are not followed; zip members with absolute paths,
`..` or links are rejected and never extracted (members are read into memory, never written).
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from preprocess.load import IMAGE_SUFFIXES

SIDECAR_SUFFIXES = (".caption", ".txt")  # kohya and AUTOMATIC1111 caption files
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass
class SourceFile:
    source: str  # the SRC as the user gave it
    path: str  # posix path relative to SRC (a zip member name for archives)
    size: int
    read: Callable[[], bytes]


@dataclass
class Scan:
    files: list[SourceFile] = field(default_factory=list)
    sidecars: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, path without suffix) → text
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    ignored: list[str] = field(default_factory=list)

    def sidecar_for(self, item: SourceFile) -> str | None:
        return self.sidecars.get((item.source, str(PurePosixPath(item.path).with_suffix(""))))


def _reader(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()


def _classify(scan: Scan, source: str, rel: str, size: int, read: Callable[[], bytes], max_bytes: int) -> None:
    name = PurePosixPath(rel).name
    suffix = PurePosixPath(rel).suffix.lower()
    if name.startswith(".") or "__MACOSX" in rel:
        scan.ignored.append(rel)
    elif suffix in SIDECAR_SUFFIXES:
        key = (source, str(PurePosixPath(rel).with_suffix("")))
        # .caption wins over .txt when both exist
        if suffix == ".caption" or key not in scan.sidecars:
            try:
                scan.sidecars[key] = read().decode("utf-8", errors="replace").strip()
            except OSError as error:
                scan.rejected.append({"path": rel, "reason": f"unreadable caption file: {error}"})
    elif suffix in IMAGE_SUFFIXES:
        if size > max_bytes:
            scan.rejected.append({"path": rel, "reason": f"file too large: {size:,} bytes (limit {max_bytes:,})"})
        else:
            scan.files.append(SourceFile(source, rel, size, read))
    else:
        scan.ignored.append(rel)


def _scan_folder(scan: Scan, root: Path, source: str, max_bytes: int) -> None:
    real_root = root.resolve()
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in sorted(dirs):
            link = here / name
            if link.is_symlink():  # os.walk does not descend into it; say why if it points out
                target = link.resolve()
                if not target.is_relative_to(real_root):
                    scan.rejected.append({"path": link.relative_to(root).as_posix(),
                                          "reason": "symlink points outside the source folder: not followed"})
        dirs.sort()
        for name in sorted(names):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.exists():
                    scan.rejected.append({"path": rel, "reason": "broken symlink"})
                    continue
                if not target.is_relative_to(real_root):
                    scan.rejected.append({"path": rel, "reason": "symlink points outside the source folder: not followed"})
                    continue
                path = target
            if not path.is_file():
                scan.ignored.append(rel)
                continue
            _classify(scan, source, rel, path.stat().st_size, _reader(path), max_bytes)


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive (zip-slip): never extracted"
    if "\\" in name or ".." in PurePosixPath(name).parts:
        return "'..' or backslash in archive path (zip-slip): never extracted"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink inside archive: not followed"
    return None


def _scan_zip(scan: Scan, path: Path, source: str, max_bytes: int) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        scan.rejected.append({"path": path.name, "reason": f"not a readable zip archive: {error}"})
        return
    for info in archive.infolist():
        if info.is_dir():
            continue
        if reason := _unsafe_member(info):
            scan.rejected.append({"path": info.filename, "reason": reason})
            continue
        _classify(scan, source, info.filename, info.file_size,
                  lambda info=info: archive.read(info), max_bytes)


def scan_sources(sources: list[Path], max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Scan:
    """Every image, caption sidecar, rejection and ignored file under the sources, in a stable order."""
    scan = Scan()
    for source in sources:
        source = Path(source)
        label = str(source)
        if not source.exists():
            raise FileNotFoundError(f"source not found: {source}")
        if source.is_dir():
            _scan_folder(scan, source, label, max_file_bytes)
        elif source.suffix.lower() == ".zip":
            _scan_zip(scan, source, label, max_file_bytes)
        else:
            _classify(scan, label, source.name, source.stat().st_size, _reader(source), max_file_bytes)
    return scan
