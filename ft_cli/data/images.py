"""Images in chat records: read every way they are written, check each file, and write TRL's vision shape.

Read (chat, sharegpt and alpaca records):
- content parts: `{"type": "text", "text": ...}`, `{"type": "image", "path"|"image"|"url": SRC}`,
  `{"type": "image_url", "image_url": {"url": SRC}}` (OpenAI), and a bare `{"type": "image"}` that takes the next
  entry of the record's `images` column (TRL's own shape, so a prepared file prepares again unchanged);
- LLaMA-Factory's convention: an `images` column and one `<image>` placeholder in the text per entry.
SRC is a path (relative to the data file's directory) or a `data:` URL; http(s) URLs are refused (ft works offline).

Written: every content a list of parts, one `{"type": "image"}` per image where it sat, and the images, in order,
as absolute paths in an `images` column. An embedded `data:` image is written once, content-addressed, to
OUT.images/<sha256>.<ext> beside the output, so the JSONL stays readable and every image is a file.

The text normalisers of ft_cli.data.formats check the turns: the images are swapped for private-use marks first
(one per image, one between text parts) and swapped back after, so roles, order and answers are checked once.
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import io
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_cli.data.readers import json_type
from ft_cli.data.record_problems import RecordProblem

IMAGE_FORMATS = ("chat", "sharegpt", "alpaca", "preference")  # the formats whose records may carry images
_MESSAGE_KEYS = ("messages", "prompt", "chosen", "rejected")  # where a normalised record keeps messages
DEFAULT_MAX_PIXELS = 50_000_000  # below PIL's own decompression-bomb error (2 x 89.5M pixels)
PLACEHOLDER = "<image>"  # LLaMA-Factory's mark for the next entry of `images`
_IMAGE, _BREAK = "\ue002", "\ue003"  # stand-ins while the text normalisers read the record; never written
_SPLIT = re.compile(f"({_IMAGE}|{_BREAK})")
# Turns an image may not sit in, and why: answers are trained as text; TRL skips tool turns when it places images.
_ANSWERS, _RESULTS = "ft trains text answers, so images go in user turns", "TRL places no image in a tool turn"
_NO_IMAGES = {
    "assistant": ("an assistant", _ANSWERS),
    "gpt": ("a gpt", _ANSWERS),
    "function_call": ("a function_call", _ANSWERS),
    "tool": ("a tool", _RESULTS),
    "observation": ("an observation", _RESULTS),
}


@dataclass
class ImageRef:
    """One image as the record gives it: where (field path), the source string, and what it turned out to be."""

    where: str
    source: str | None  # None: a bare {"type": "image"} part, filled from the images column
    path: str = ""  # absolute, once checked
    width: int = 0
    height: int = 0

    @property
    def shown(self) -> str:
        """The source as a message shows it: data: URLs cut short."""
        source = self.source or ""
        return source if not source.startswith("data:") or len(source) <= 40 else f"{source[:32]}…({len(source)} chars)"


@dataclass
class ImageOptions:
    base_dir: Path  # relative paths resolve against the data file's directory
    max_pixels: int = DEFAULT_MAX_PIXELS
    store: ImageStore | None = None  # where embedded images are written; None refuses them (ft train on raw data)
    checked: dict = field(default_factory=dict)  # (path, size, mtime) -> (absolute path, width, height): an image reused is read once


def has_images(record: dict) -> bool:
    """A record the image path reads: an images column, or a message whose content is a list of parts."""
    if "images" in record:
        return True
    for key in ("messages", "conversations", "prompt", "chosen", "rejected"):
        turns = record.get(key)
        if isinstance(turns, list) and any(isinstance(t, dict) and isinstance(t.get("content", t.get("value")), list) for t in turns):
            return True
    return False


def flatten(record: dict, data_format: str) -> tuple[dict, list[ImageRef], bool]:
    """The record with its images swapped for marks (for the text normalisers), the images in order, and whether
    it is an image record (an images column or an image part; a list of text parts alone is plain text)."""
    if data_format not in IMAGE_FORMATS:
        raise RecordProblem("images", f"images are read in chat, sharegpt, alpaca and preference records; not in {data_format} data")
    column = record.get("images")
    if column is not None and not isinstance(column, list):
        raise RecordProblem("images", f"expected a list of image paths, got {json_type(column)}")
    refs: list[ImageRef] = []
    flat = {k: v for k, v in record.items() if k != "images"}
    placeholders = column is not None  # `<image>` marks an image only where the record has an images column
    if data_format == "alpaca":
        if "instances" in record and "output" not in record:
            raise RecordProblem("instances", "a record with images has one instruction and one output (not instances)")
        for key in ("instruction", "input", "output"):
            if isinstance(record.get(key), str):
                flat[key] = _marked_text(record[key], key, refs, placeholders, ("an output", _ANSWERS) if key == "output" else None)
    elif data_format == "preference":  # TRL's vision pairs: the images sit in the prompt's messages
        if not isinstance(record.get("prompt"), list):
            raise RecordProblem("prompt", "a preference pair with images gives its prompt as a list of messages (prompt + chosen + rejected)")
        for key in ("prompt", "chosen", "rejected"):
            if isinstance(record.get(key), list):
                flat[key] = [_flat_turn(t, f"{key}[{i}]", "role", "content", refs, placeholders) for i, t in enumerate(record[key])]
    else:
        key, role_key, text_key = ("messages", "role", "content") if data_format == "chat" else ("conversations", "from", "value")
        turns = record.get(key)
        if isinstance(turns, list):
            flat[key] = [_flat_turn(t, f"{key}[{i}]", role_key, text_key, refs, placeholders) for i, t in enumerate(turns)]
    bare = [ref for ref in refs if ref.source is None]
    if column is not None:
        if len(bare) != len(column):
            raise RecordProblem(
                "images", f"{len(column)} image(s) listed but {len(bare)} {PLACEHOLDER} placeholder(s) or {{\"type\": \"image\"}} part(s) in the turns"
            )
        for i, (ref, entry) in enumerate(zip(bare, column)):
            if not isinstance(entry, str):
                raise RecordProblem(f"images[{i}]", f"expected a path, got {json_type(entry)}")
            ref.where, ref.source = f"images[{i}]", entry
    elif bare:
        raise RecordProblem(bare[0].where, "an image part without a source: give path (or image_url), or list the images in an images column")
    return flat, refs, bool(refs) or column is not None


def _flat_turn(turn: Any, here: str, role_key: str, text_key: str, refs: list[ImageRef], placeholders: bool) -> Any:
    if not isinstance(turn, dict):
        return turn  # read_turns says what is wrong with it
    role = turn.get(role_key)
    answer = _NO_IMAGES.get(role) if isinstance(role, str) else None
    content = turn.get(text_key)
    if isinstance(content, str):
        return {**turn, text_key: _marked_text(content, f"{here}.{text_key}", refs, placeholders, answer)}
    if not isinstance(content, list):
        return turn
    pieces = []
    for j, part in enumerate(content):
        where = f"{here}.{text_key}[{j}]"
        if not isinstance(part, dict):
            raise RecordProblem(where, f"expected a content part (an object with a type), got {json_type(part)}")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RecordProblem(f"{where}.text", f"expected a string, got {json_type(part.get('text'))}")
            pieces.append(part["text"])
        elif kind in ("image", "image_url"):
            if answer:
                raise RecordProblem(where, f"an image in {answer[0]} turn: {answer[1]}")
            refs.append(ImageRef(where, _part_source(part, where)))
            pieces.append(_IMAGE)
        else:
            raise RecordProblem(f"{where}.type", f"'{kind}' parts are not read (expected text, image or image_url)")
    return {**turn, text_key: _BREAK.join(pieces)}


def _part_source(part: dict, where: str) -> str | None:
    if part["type"] == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str):
            raise RecordProblem(f"{where}.image_url", "expected {\"url\": \"data:...\" or a path}")
        return url
    for key in ("path", "image", "url"):
        if isinstance(part.get(key), str):
            return part[key]
        if part.get(key) is not None:
            raise RecordProblem(f"{where}.{key}", f"expected a path, got {json_type(part[key])}")
    return None


def _marked_text(text: str, where: str, refs: list[ImageRef], placeholders: bool, answer: tuple[str, str] | None) -> str:
    if not placeholders or PLACEHOLDER not in text:
        return text
    if answer:
        raise RecordProblem(where, f"{PLACEHOLDER} in {answer[0]} turn: {answer[1]}")
    refs.extend(ImageRef(where, None) for _ in range(text.count(PLACEHOLDER)))
    return text.replace(PLACEHOLDER, _IMAGE)


def restore(record: dict, refs: list[ImageRef], vision: bool) -> dict:
    """A normalised record with its marks turned back: content parts and an images column (vision), or the text
    parts joined (a list of text parts only, no images column: plain text, as before)."""
    out = dict(record)
    for key in _MESSAGE_KEYS:
        if isinstance(record.get(key), list):
            out[key] = [_restored(message, vision) for message in record[key]]
    if vision:
        out["images"] = [ref.path for ref in refs]
    return out


def _restored(message: dict, vision: bool) -> dict:
    content = message.get("content")
    if isinstance(content, str) and vision:
        parts = [{"type": "image"} if piece == _IMAGE else {"type": "text", "text": piece} for piece in _SPLIT.split(content) if piece and piece != _BREAK]
        return {**message, "content": parts}
    if isinstance(content, str):
        return {**message, "content": content.replace(_BREAK, "")}
    return message


# --- the files --------------------------------------------------------------------


def check_images(refs: list[ImageRef], options: ImageOptions) -> None:
    """Each image found, opened, verified and measured; the first problem raises, naming the field and the image."""
    for ref in refs:
        try:
            _check(ref, options)
        except _Bad as bad:
            raise RecordProblem(ref.where, f"image {ref.shown}: {bad}") from None


class _Bad(Exception):
    pass


def _check(ref: ImageRef, options: ImageOptions) -> None:
    source = ref.source or ""
    if re.match(r"(?i)https?://", source):
        raise _Bad("remote images are not fetched; download them and give a path")
    if source.startswith("data:"):
        data = _decode_data_url(source)
        ref.width, ref.height, extension = _measure(lambda: io.BytesIO(data), len(data), options.max_pixels)
        if options.store is None:
            raise _Bad("embedded images are written out by ft prepare; run ft prepare on this file and train on its output")
        ref.path = str(options.store.put(data, extension))
        return
    if not source.strip():
        raise _Bad("empty path")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else options.base_dir / path
    if not path.exists():
        raise _Bad(f"no such file ({path})")
    if not path.is_file():
        raise _Bad(f"not a file ({path})")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in options.checked:
        width, height, _ = _measure(lambda: open(path, "rb"), stat.st_size, options.max_pixels)
        options.checked[key] = (str(path.resolve()), width, height)
    ref.path, ref.width, ref.height = options.checked[key]


def _decode_data_url(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise _Bad("a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("the data: URL is not valid base64") from None


def _measure(open_file, size: int, max_pixels: int) -> tuple[int, int, str]:
    """Width, height and file extension; the pixels are decoded once to catch a truncated file and then dropped.
    The size is read from the header and checked before anything is decoded, so a bomb is never expanded."""
    from PIL import Image

    if size == 0:
        raise _Bad("empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our limit applies, with a message that names it; PIL's is restored below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_file() as handle, Image.open(handle) as image:
                width, height, kind = image.width, image.height, image.format or "png"
                if width * height > max_pixels:
                    raise _Bad(f"{width}x{height} is {width * height} pixels, more than --max-image-pixels {max_pixels}")
                image.verify()  # structure and checksums, without decoding
            with open_file() as handle, Image.open(handle) as image:
                image.draft("RGB", (1, 1))  # JPEG decodes at 1/8 scale; the whole stream is still read
                image.load()
    except _Bad:
        raise
    except Image.UnidentifiedImageError:
        raise _Bad("not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated, bad checksum, bad header
        raise _Bad(f"cannot be decoded: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return width, height, {"jpeg": "jpg"}.get(kind.lower(), kind.lower())


class ImageStore:
    """Embedded images written as files, named by their sha256: staged while prepare runs, moved into place on
    publish. An existing file of that name is used when it holds the same bytes and never replaced otherwise."""

    def __init__(self, final_dir: Path):
        self.final_dir = final_dir
        self.staging = final_dir.with_name(f".{final_dir.name}.ft{os.getpid()}.tmp")  # the name writer.py's temp files have
        self.staged: list[str] = []

    def remove_stale(self) -> None:
        """Staging directories a killed `ft prepare` left here, when their process is gone."""
        from ft_cli.core.partial import process_alive

        parent = self.final_dir.parent
        for leftover in parent.glob(f".{glob.escape(self.final_dir.name)}.ft*.tmp") if parent.is_dir() else []:
            pid = leftover.name[len(self.final_dir.name) + 4 :].split(".", 1)[0]
            if leftover.is_dir() and not leftover.is_symlink() and pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)

    def put(self, data: bytes, extension: str) -> Path:
        name = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        final = self.final_dir / name
        if final.is_symlink() or (final.exists() and (not final.is_file() or final.read_bytes() != data)):
            raise _Bad(f"{final} exists with other content; ft does not replace it")
        if not final.exists() and name not in self.staged:
            self.staging.mkdir(parents=True, exist_ok=True)
            (self.staging / name).write_bytes(data)
            self.staged.append(name)
        return final.resolve() if final.exists() else final.parent.resolve() / name

    def publish(self) -> None:
        if self.staged:
            self.final_dir.mkdir(parents=True, exist_ok=True)
            for name in self.staged:
                os.replace(self.staging / name, self.final_dir / name)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


# --- what prepare reports and previews ------------------------------------------------


def image_marker(number: int, ref: ImageRef) -> str:
    return f"[image {number}: {ref.width}x{ref.height} {ref.shown}]"


def text_view(record: dict, refs: list[ImageRef]) -> dict:
    """The record with each image as a text marker: what a text tokenizer renders for token counts and the preview.
    The markers sit in user turns, so they fall in the untrained (prompt) part, as the image tokens will."""
    numbered = iter(enumerate(refs, start=1))

    def text(message: dict) -> dict:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        return {**message, "content": "".join(part["text"] if part["type"] == "text" else image_marker(*next(numbered)) for part in content)}

    view = {key: value for key, value in record.items() if key != "images"}
    for key in _MESSAGE_KEYS:  # prompt before chosen and rejected: the order the images were numbered in
        if isinstance(record.get(key), list):
            view[key] = [text(message) for message in record[key]]
    return view


@dataclass
class ImageStats:
    total: int = 0
    records: int = 0  # records with at least one image
    most_in_record: int = 0
    smallest: tuple[int, int] | None = None  # (width, height) by pixel count
    largest: tuple[int, int] | None = None

    def count(self, refs: list[ImageRef]) -> None:
        self.total += len(refs)
        self.records += bool(refs)
        self.most_in_record = max(self.most_in_record, len(refs))
        for ref in refs:
            size = (ref.width, ref.height)
            if self.smallest is None or size[0] * size[1] < self.smallest[0] * self.smallest[1]:
                self.smallest = size
            if self.largest is None or size[0] * size[1] > self.largest[0] * self.largest[1]:
                self.largest = size

    def row(self) -> str:
        sizes = f"; sizes {self.smallest[0]}x{self.smallest[1]} to {self.largest[0]}x{self.largest[1]}" if self.smallest and self.largest else ""
        return f"{self.total} in {self.records} records (at most {self.most_in_record} per record){sizes}"

    def as_dict(self) -> dict:
        return {"total": self.total, "records": self.records, "max_per_record": self.most_in_record, "smallest": self.smallest, "largest": self.largest}
