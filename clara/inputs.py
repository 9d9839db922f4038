"""Checks for what people hand to clara: image files (judged by content, never by name), post
texts, and the images a batch CSV names (found in an uploaded ZIP read in memory, or in a folder
the caller trusts, never outside it). One set of rules for scripts/predict.py, clara.batch and
the app; the per-kind upload limits live here once. Problems raise InputError, whose message is
written for the person who gave the input.
"""
from __future__ import annotations

import io
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clara.data.images import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, ImageError, open_image

# The largest file accepted per input kind, in MB: the app's upload widgets, their labels and the
# checks below read these; .streamlit/config.toml's server.maxUploadSize is the largest of them.
UPLOAD_LIMITS_MB = {"image": 10, "csv": 10, "zip": 200}
UPLOAD_KIND_NAMES = {"image": "image", "csv": "CSV file", "zip": "ZIP archive"}
# Smaller than clara's loader limit: the app decodes uploads in a shared server process.
APP_MAX_IMAGE_PIXELS = min(MAX_IMAGE_PIXELS, 40_000_000)
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "gif")
MAX_TEXT_CHARS = 5000
MAX_ZIP_TOTAL_BYTES = 500 * 2**20  # what a batch ZIP may unpack to, all members together


class InputError(ValueError):
    """Input clara cannot use; the message is written for the person who gave it, `reason` is the
    short form a command-line tool prints after the file's name."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def upload_limit_bytes(kind: str) -> int:
    return UPLOAD_LIMITS_MB[kind] * 2**20


def format_bytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 1024:.0f} KB"


def check_upload_size(kind: str, data: bytes) -> bytes:
    """`data` when it is within the upload limit of its kind (image, csv, zip); InputError otherwise."""
    limit = upload_limit_bytes(kind)
    if len(data) > limit:
        name = UPLOAD_KIND_NAMES[kind]
        raise InputError(f"The {name} is {format_bytes(len(data))}; a {name} may be up to "
                         f"{UPLOAD_LIMITS_MB[kind]} MB.")
    return data


# ----------------------------------------------------------------------------- images

@dataclass
class CheckedImage:
    """An image that passed the checks: the decoded RGB image plus what was found."""
    image: Image.Image  # RGB, EXIF orientation applied, first frame of an animation
    data: bytes  # the original file bytes
    format: str  # PNG | JPEG | WEBP | GIF, from the content
    frames: int = 1
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. first frame used)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def sniff_image_format(data: bytes) -> str | None:
    """The image format from the first bytes of the content (never the file name), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_content(data: bytes) -> str:
    """What a non-image file looks like, for the error message."""
    head = data[:512]
    known = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive (or an Office document)",
             b"BM": "a BMP image (not accepted: use PNG, JPEG, WebP or GIF)",
             b"II*\x00": "a TIFF image (not accepted)", b"MM\x00*": "a TIFF image (not accepted)",
             b"\x00\x00\x00": "an HEIC/AVIF or video file (not accepted)"}
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text.lstrip("\ufeff")):
        return "text, not an image"
    return "unrecognised data"


def check_image_upload(data: bytes, max_bytes: int = upload_limit_bytes("image"),
                       max_pixels: int = APP_MAX_IMAGE_PIXELS) -> CheckedImage:
    """Check and decode an image held in memory; raise InputError saying what is wrong.

    Refuses empty files, files over `max_bytes`, content that is not PNG/JPEG/WebP/GIF whatever
    the name says, images over `max_pixels` (checked from the header, before decoding, so a
    decompression bomb is never decoded) and truncated or corrupt files. A GIF gives its first frame.
    """
    if not data:
        raise InputError("The file is empty (0 bytes). Choose an image file (PNG, JPEG, WebP or GIF).",
                         "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise InputError(f"The file is {format_bytes(len(data))}; images up to {format_bytes(max_bytes)} "
                         "are accepted. Resize or compress it and try again.",
                         f"{format_bytes(len(data))}, over the limit of {format_bytes(max_bytes)}")
    fmt = sniff_image_format(data)
    if fmt is None:
        what = describe_content(data)
        raise InputError(f"This file is not a PNG, JPEG, WebP or GIF image: its content looks like "
                         f"{what}, whatever its name says. Choose an image file.",
                         f"not a PNG, JPEG, WebP or GIF image (the content looks like {what})")
    try:
        image = open_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise InputError(_image_problem_message(exc.problem, fmt, max_pixels), exc.problem) from None
    checked = CheckedImage(image=image, data=data, format=fmt)
    if fmt in ("GIF", "WEBP"):
        checked.frames = _frame_count(data)
        if checked.frames > 1:
            checked.notes.append(f"Animated {fmt} with {checked.frames} frames: the first frame is used.")
    return checked


def read_image_file(path: str | Path) -> CheckedImage:
    """An image file on disk, checked by the same rules as an upload; the message names the file."""
    try:
        return check_image_upload(_read_regular_file(Path(path), upload_limit_bytes("image")))
    except InputError as exc:
        raise InputError(f"cannot use image {path}: {exc.reason}") from None


def _image_problem_message(problem: str, fmt: str, max_pixels: int) -> str:
    if "pixels" in problem and ("limit" in problem or "bomb" in problem):
        return (f"The image is too large to open safely ({problem}). Images up to "
                f"{max_pixels / 1e6:.0f} megapixels (e.g. 6000 x 6000) are accepted: resize it and try again.")
    if "longer side" in problem or "too thin" in problem:
        return (f"The image's shape cannot be used ({problem}). Crop or resize it to at most "
                f"{MAX_IMAGE_SIDE:,} pixels a side and {MAX_ASPECT_RATIO}:1, then try again.")
    if "decode" in problem or "truncated" in problem:
        return (f"The {fmt} file is damaged or incomplete, e.g. a truncated download ({problem}). "
                "Re-save or re-download the image and try again.")
    return f"The image cannot be used: {problem}."


def _frame_count(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # the first frame decoded already; a broken later frame does not matter here
        return 1


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; any OSError becomes an InputError."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a folder, a FIFO, a device: never opened
            raise InputError("not a regular file")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # never more, whatever the size the file system reports
    except FileNotFoundError:
        raise InputError("file not found") from None
    except (OSError, ValueError) as exc:  # permission, an I/O error (e.g. /proc/self/mem), a NUL byte
        raise InputError(f"cannot read the file ({getattr(exc, 'strerror', None) or exc})") from None
    if len(data) > max_bytes:
        raise InputError(f"the file is over {format_bytes(max_bytes)}")
    return data


# ----------------------------------------------------------------------------- texts

TEXT_SOURCES = ("post text + image text", "post text only", "image text only")


def check_text(text: str | None, max_chars: int = MAX_TEXT_CHARS, allow_empty: bool = False) -> str:
    """The text to classify, stripped; raise InputError when it is empty (unless `allow_empty`),
    too long, or not valid Unicode. Invisible characters alone (zero-width spaces) count as empty."""
    cleaned = (text or "").replace("\x00", "").strip()
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from undecodable command-line bytes
        raise InputError(f"The text holds a character that is not valid Unicode at position {exc.start}; "
                         "retype it or save it as UTF-8.") from None
    visible = "".join(ch for ch in cleaned if unicodedata.category(ch) != "Cf").strip()
    if not visible and not allow_empty:
        raise InputError("The text is empty. Type the post's text (or the text in the image) before predicting.")
    if len(cleaned) > max_chars:
        raise InputError(f"The text has {len(cleaned):,} characters; at most {max_chars:,} are accepted "
                         "(a tweet has at most 280). Shorten it and try again.")
    return cleaned if visible else ""


def compose_text(post_text: str | None, image_text: str | None, source: str = TEXT_SOURCES[0]) -> str:
    """The text the model reads: the typed post text, the OCR'd image text, or both (post first)."""
    post, ocr = (post_text or "").strip(), (image_text or "").strip()
    if source == TEXT_SOURCES[1]:
        return post
    if source == TEXT_SOURCES[2]:
        return ocr
    if source != TEXT_SOURCES[0]:
        raise ValueError(f"unknown text source {source!r}; choose one of: {', '.join(TEXT_SOURCES)}")
    return " ".join(part for part in (post, ocr) if part)


def safe_display_name(name: str | None, limit: int = 60) -> str:
    """An uploaded file's name reduced to harmless characters, only ever for display."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", os.path.basename(name or "upload"))[:limit]
    return cleaned or "upload"


# ----------------------------------------------------------------------------- a batch's images

def allowed_folder(folder: str, roots: Sequence[str | Path]) -> Path:
    """The images folder a person typed, resolved, when it lies inside one of `roots` (the folders
    the operator allowed); InputError otherwise, with the same message whether or not it exists."""
    resolved_roots = [Path(root).expanduser().resolve() for root in roots]
    if not resolved_roots:
        raise InputError("Reading images from a folder is off on this server: upload a ZIP with the images.")
    given = Path(folder.strip()).expanduser()
    candidates = [given] if given.is_absolute() else [root / given for root in resolved_roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            continue
        if any(resolved.is_relative_to(root) for root in resolved_roots):
            if not resolved.is_dir():
                raise InputError(f"There is no folder {resolved}.")
            return resolved
    raise InputError(f"The images folder must lie inside one of the allowed folders: "
                     f"{', '.join(map(str, resolved_roots))}.")


class BatchImages:
    """Where the images a batch CSV names are found: an uploaded ZIP (members read in memory,
    never extracted; looked up by path, then by file name) and/or a folder.

    With `confine` (the app), a path from the CSV must resolve, symlinks followed, inside the
    folder; `..` or an absolute path leading out gets the same message whether or not the file
    exists. Without it (scripts/predict.py, run by the machine's own user) a path is relative to
    the folder or absolute.
    """

    def __init__(self, zip_data: bytes | None = None, folder: str | Path | None = None, confine: bool = True):
        self.folder = Path(folder).expanduser().resolve() if folder is not None else None
        self.confine = confine
        self._archive: zipfile.ZipFile | None = None
        self._by_path: dict[str, zipfile.ZipInfo] = {}
        self._by_name: dict[str, list[zipfile.ZipInfo]] = {}
        if zip_data is not None:
            self._open_zip(zip_data)

    def _open_zip(self, zip_data: bytes) -> None:
        try:
            archive = zipfile.ZipFile(io.BytesIO(zip_data))
            members = [m for m in archive.infolist() if not m.is_dir()]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise InputError("The uploaded archive is not a valid ZIP file.") from None
        if sum(m.file_size for m in members) > MAX_ZIP_TOTAL_BYTES:
            raise InputError(f"The ZIP unpacks to more than {MAX_ZIP_TOTAL_BYTES // 2**20} MB; send fewer images.")
        self._archive = archive
        for member in members:
            key = zip_key(member.filename)
            self._by_path.setdefault(key, member)
            self._by_name.setdefault(key.rsplit("/", 1)[-1], []).append(member)

    def read(self, ref: str) -> bytes:
        """The bytes of the image a CSV row names; InputError saying why it cannot be had."""
        if not ref:
            raise InputError("no image path")
        if self._archive is not None:
            member = self._zip_member(ref)
            if member is not None:
                return self._read_member(member)
            if self.folder is None:
                raise InputError(f"{ref!r} is not in the uploaded ZIP.")
        elif self.folder is None:
            raise InputError("Upload a ZIP with the images, or give an images folder.")
        return self._read_from_folder(ref)

    def _zip_member(self, ref: str) -> zipfile.ZipInfo | None:
        key = zip_key(ref)
        member = self._by_path.get(key)
        if member is None:  # by file name alone, only when exactly one member has it (never a guess)
            same_name = self._by_name.get(key.rsplit("/", 1)[-1], [])
            if len(same_name) > 1:
                raise InputError(f"{ref!r} matches {len(same_name)} files in the ZIP "
                                 f"({', '.join(m.filename for m in same_name[:3])}); give its path inside the ZIP.")
            member = same_name[0] if same_name else None
        return member

    def _read_member(self, member: zipfile.ZipInfo) -> bytes:
        limit = upload_limit_bytes("image")
        if member.file_size > limit:
            raise InputError(f"{member.filename} in the ZIP is over {UPLOAD_LIMITS_MB['image']} MB.")
        try:
            return self._archive.read(member)
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, NotImplementedError, EOFError,
                zlib.error) as exc:  # CRC error, encrypted or damaged member
            raise InputError(f"{member.filename} cannot be read from the ZIP ({exc}).") from None

    def _read_from_folder(self, ref: str) -> bytes:
        assert self.folder is not None
        try:
            path = (self.folder / ref).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise InputError(f"{ref!r} cannot be resolved ({exc}).") from None
        if self.confine and not path.is_relative_to(self.folder):  # checked before the path is ever opened
            raise InputError(f"{ref!r} points outside the images folder {self.folder}.")
        try:
            return _read_regular_file(path, upload_limit_bytes("image"))
        except InputError as exc:
            where = f"{ref!r} is not in the uploaded ZIP; " if self._archive is not None else ""
            raise InputError(f"{where}{path}: {exc}") from None


def zip_key(name: str) -> str:
    """A ZIP member name or CSV reference as a lookup key: "/", "." and ".." parts dropped. Only ever a
    dictionary key: members are read in memory, never extracted, so no name can reach the file system."""
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", ".", ".."))
