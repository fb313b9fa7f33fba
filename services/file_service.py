"""FileService: save, delete and serve uploaded files.

Bytes live behind a small storage interface (`LocalStorage`: a folder on disk); an object store
can replace it by implementing the same four methods.

Rules: the extension must be allowed and the file's leading bytes must agree with it; stored
names are generated (the client's name is kept for display only); every path is resolved
inside UPLOAD_FOLDER and symlinks are refused; empty files are refused; the size limit is
MAX_CONTENT_LENGTH (Werkzeug answers 413 before the body is read).
"""
from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, send_file
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from utils.errors import NotFound, UnsupportedMediaType, ValidationError

# extension -> (kind, MIME type)
ALLOWED = {
    "png": ("image", "image/png"), "jpg": ("image", "image/jpeg"),
    "jpeg": ("image", "image/jpeg"), "gif": ("image", "image/gif"),
    "webp": ("image", "image/webp"),
    "pdf": ("pdf", "application/pdf"),
    "mp4": ("video", "video/mp4"), "webm": ("video", "video/webm"),
    "mov": ("video", "video/quicktime"),
    "mp3": ("audio", "audio/mpeg"), "wav": ("audio", "audio/wav"),
    "ogg": ("audio", "audio/ogg"), "m4a": ("audio", "audio/mp4"),
    "txt": ("document", "text/plain"), "doc": ("document", "application/msword"),
    "docx": ("document",
             "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "ppt": ("document", "application/vnd.ms-powerpoint"),
    "pptx": ("document",
             "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
}
# Folders whose files are public (served by routes/media.py); all others need authorisation.
PUBLIC_FOLDERS = frozenset({"profiles", "thumbnails"})
PUBLIC_URL_PREFIX = "/static/uploads/"
IMAGE_EXTENSIONS = frozenset(ext for ext, (kind, _) in ALLOWED.items() if kind == "image")

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ISO_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _is_mp3(head: bytes) -> bool:
    return head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _is_text(path: Path) -> bool:
    data = path.read_bytes()[:1 << 20]
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # a multi-byte character cut at the sample's end
    return True


def _is_office_zip(path: Path, folder: str) -> bool:
    # Reads the central directory only: nothing is decompressed, so a zip bomb costs nothing.
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return "[Content_Types].xml" in names and any(n.startswith(folder) for n in names)


def content_matches(ext: str, path: Path) -> bool:
    """Do the file's leading bytes agree with its extension?"""
    with path.open("rb") as handle:
        head = handle.read(16)
    checks = {
        "png": lambda: head.startswith(b"\x89PNG\r\n\x1a\n"),
        "jpg": lambda: head.startswith(b"\xff\xd8\xff"),
        "jpeg": lambda: head.startswith(b"\xff\xd8\xff"),
        "gif": lambda: head[:6] in (b"GIF87a", b"GIF89a"),
        "webp": lambda: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
        "pdf": lambda: head.startswith(b"%PDF-"),
        "mp4": lambda: head[4:8] == b"ftyp",
        "m4a": lambda: head[4:8] == b"ftyp",
        "mov": lambda: head[4:8] in _ISO_BMFF_BOXES,
        "webm": lambda: head.startswith(b"\x1a\x45\xdf\xa3"),
        "mp3": lambda: _is_mp3(head),
        "wav": lambda: head[:4] == b"RIFF" and head[8:12] == b"WAVE",
        "ogg": lambda: head.startswith(b"OggS"),
        "doc": lambda: head.startswith(_OLE2),
        "ppt": lambda: head.startswith(_OLE2),
        "docx": lambda: head.startswith(b"PK\x03\x04") and _is_office_zip(path, "word/"),
        "pptx": lambda: head.startswith(b"PK\x03\x04") and _is_office_zip(path, "ppt/"),
        "txt": lambda: _is_text(path),
    }
    return checks[ext]()


@dataclass
class StoredFile:
    relative_path: str  # inside UPLOAD_FOLDER, e.g. "profiles/3f2a....png"
    original_filename: str
    extension: str
    kind: str
    mime_type: str
    size: int
    sha256: str


class LocalStorage:
    """Stored files in a folder. Keys are relative paths ("resources/ab12....pdf")."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        """The file for `key`, refusing anything outside the root (traversal, symlinks)."""
        if not key or "\x00" in key:
            raise NotFound("File not found")
        candidate = self.root / key
        if candidate.is_symlink():
            raise NotFound("File not found")
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise NotFound("File not found")
        return resolved

    def scratch(self, folder: str) -> Path:
        """A place to write an upload before it is checked and kept."""
        directory = self.root / folder
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f".{uuid.uuid4().hex}.part"

    def keep(self, scratch: Path, key: str) -> None:
        os.replace(scratch, self.path(key))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def storage() -> LocalStorage:
    return LocalStorage(Path(current_app.config["UPLOAD_FOLDER"]).resolve())


def public_url(relative_path: str) -> str:
    return PUBLIC_URL_PREFIX + relative_path


def resolve(relative_path: str) -> Path:
    """The absolute path of a stored file, refusing anything outside the upload root."""
    return storage().path(relative_path)


def _extension_of(filename: str) -> str:
    if "\x00" in filename:
        raise ValidationError("Invalid file name", details={"file": "contains a null byte"})
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def save(upload: FileStorage | None, subdir: str, allowed: frozenset[str] | set[str] | None = None
         ) -> StoredFile:
    """Validate and store an upload under `subdir`; returns what was stored."""
    if upload is None or not upload.filename:
        raise ValidationError("A file is required", details={"file": "is required"})
    ext = _extension_of(upload.filename)
    permitted = allowed if allowed is not None else ALLOWED.keys()
    if ext not in permitted:
        raise UnsupportedMediaType(
            f"Files of type '.{ext}' are not accepted here; allowed: "
            + ", ".join(sorted(permitted)),
            details={"file": "type not allowed"})
    kind, mime_type = ALLOWED[ext]
    store = storage()
    key = f"{subdir}/{uuid.uuid4().hex}.{ext}"
    partial = store.scratch(subdir)
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as out:
            for chunk in iter(lambda: upload.stream.read(1 << 16), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size == 0:
            raise ValidationError("The file is empty", details={"file": "is empty"})
        if not content_matches(ext, partial):
            raise UnsupportedMediaType(
                f"The file's content is not a valid .{ext} file",
                details={"file": "content does not match its extension"})
        store.keep(partial, key)
    finally:
        partial.unlink(missing_ok=True)
    original = secure_filename(upload.filename) or f"file.{ext}"
    return StoredFile(key, original[:255], ext, kind, mime_type, size, digest.hexdigest())


def delete(relative_path: str | None) -> None:
    """Remove a stored file; a missing file is not an error (the goal is that it is gone)."""
    if not relative_path:
        return
    try:
        storage().delete(relative_path)
    except NotFound:
        pass


def serve(relative_path: str, *, mime_type: str | None = None, download_name: str | None = None,
          as_attachment: bool = False, public: bool = False):
    """Stream a stored file with its type, a safe Content-Disposition and HTTP Range (206).
    Private unless `public` (profile pictures, thumbnails): a file served to a signed-in reader
    (a lesson resource, a certificate), shown inline or downloaded, is `private, no-store`,
    so no shared cache keeps it and no browser keeps it after the session."""
    path = resolve(relative_path)
    if not path.is_file():
        raise NotFound("File not found")
    response = send_file(path, mimetype=mime_type, as_attachment=as_attachment,
                         download_name=download_name or path.name, conditional=True,
                         max_age=3600 if public else None)
    if not public:
        response.headers["Cache-Control"] = "private, no-store"
        response.headers.pop("Expires", None)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def store_public_image(upload, folder: str, previous_url: str | None) -> tuple[str, str | None]:
    """Store an uploaded image under `folder` for a public URL: (its URL, the stored path of
    the image it replaces when that one is ours, for the caller to delete after the commit)."""
    stored = save(upload, folder, allowed=IMAGE_EXTENSIONS)
    ours = PUBLIC_URL_PREFIX + folder + "/"
    replaced = previous_url[len(PUBLIC_URL_PREFIX):] if previous_url and \
        previous_url.startswith(ours) else None
    return public_url(stored.relative_path), replaced


@contextmanager
def deleted_if_fails(path: str):
    """Delete the stored file `path` if the block (the commit of its row) fails, and re-raise:
    no file is left without its row."""
    try:
        yield
    except Exception:
        delete(path)
        raise
