"""Metadata embedded in uploaded images: read rights and camera fields, strip location losslessly.

Everything here works on the container (JPEG marker segments, PNG chunks, WebP RIFF chunks) and
never decodes pixels, so a stripped copy keeps the creator's compressed image data byte for byte.
Uploads are untrusted: XML goes through defusedxml, every length is bounds-checked, and metadata
that cannot be read is dropped (when stripping) or ignored (when reading), never an exception.
No Django imports: the pipeline runs in workers, benchmarks and tests alike.
"""

from __future__ import annotations

import io
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from datetime import datetime

from defusedxml.ElementTree import fromstring as parse_untrusted_xml
from PIL import Image, ImageOps

__all__ = [
    "DATA_MINING_CODES",
    "EmbeddedMetadata",
    "StrippedCopy",
    "read_embedded_metadata",
    "strip_location",
]

# The PLUS "Data Mining" controlled vocabulary (http://ns.useplus.org/ldf/vocab/...), used by the
# IPTC Photo Metadata Standard (2023.1 onwards) to opt images in or out of AI/ML training.
DATA_MINING_CODES = (
    "DMI-UNSPECIFIED",
    "DMI-ALLOWED",
    "DMI-PROHIBITED-AIMLTRAINING",
    "DMI-PROHIBITED-GENAIMLTRAINING",
    "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
    "DMI-PROHIBITED",
    "DMI-PROHIBITED-SEECONSTRAINT",
    "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR",
    "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR",
)
# Every "DMI-PROHIBITED*" code either forbids AI/ML training outright or makes mining depend on
# constraints we cannot evaluate (free-text "other constraints", embedded or linked rights
# expressions). A marketplace selling training data must not guess those in its own favour, so
# all of them count as a prohibition.
_PROHIBITING_PREFIX = "DMI-PROHIBITED"


@dataclass(frozen=True)
class EmbeddedMetadata:
    creator: str = ""
    copyright: str = ""
    data_mining: str = ""
    ai_training_prohibited: bool = False
    camera_make: str = ""
    camera_model: str = ""
    lens_model: str = ""
    captured_at: datetime | None = None
    orientation: int = 1
    has_location: bool = False


@dataclass(frozen=True)
class StrippedCopy:
    data: bytes
    removed: tuple[str, ...]  # human-readable names of what was taken out; empty: input unchanged
    lossless: bool  # False only when the image had to be re-encoded


class _Malformed(Exception):
    """A container or metadata block whose structure cannot be trusted."""


# --- small byte helpers -----------------------------------------------------------------------

_MAX_INFLATED = 16 * 1024 * 1024  # compressed text chunks are untrusted: no zip bombs


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, _MAX_INFLATED)
    except zlib.error as error:
        raise _Malformed("bad compressed metadata") from error
    if inflater.unconsumed_tail:
        raise _Malformed("compressed metadata too large")
    return out


def _clean_text(value: object) -> str:
    """EXIF/IPTC strings arrive as bytes or str padded with NULs and spaces."""
    if isinstance(value, bytes):
        value = _decode(value)
    elif isinstance(value, tuple):
        value = " ".join(str(part) for part in value)
    return " ".join(str(value).replace("\x00", " ").split())


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _dedupe(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# --- containers -------------------------------------------------------------------------------

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
_PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
_MPF_HEADER = b"MPF\x00"
_APP1, _APP2, _APP13, _SOS, _EOI = 0xE1, 0xE2, 0xED, 0xDA, 0xD9
_MAX_SEGMENT_PAYLOAD = 65535 - 2  # the 16-bit length counts itself


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The marker segments before the first scan, and where the scan (SOS marker) starts."""
    if not data.startswith(_JPEG_SOI):
        raise _Malformed("not a JPEG")
    segments, pos = [], 2
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise _Malformed("expected a JPEG marker")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= len(data):
            raise _Malformed("JPEG ends before its image data")
        marker = data[pos]
        pos += 1
        if marker == _SOS:
            return segments, pos - 2
        if marker in (_EOI, 0x01) or 0xD0 <= marker <= 0xD7:  # no image yet, or standalone markers
            raise _Malformed("unexpected JPEG marker before the image data")
        if pos + 2 > len(data):
            raise _Malformed("truncated JPEG segment")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > len(data):
            raise _Malformed("JPEG segment length out of range")
        segments.append((marker, data[pos + 2 : pos + length]))
        pos += length


# A marker inside entropy-coded data: 0xFF (plus fill bytes) not followed by a stuffed 0x00 or RSTn.
# (Fill bytes: the match starts at the last 0xFF. Written without a repeat so re scans fast.)
_ENTROPY_MARKER = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")


def _jpeg_image_end(data: bytes, scan_start: int) -> int | None:
    """Index just past the EOI that ends the image whose first scan starts at scan_start.

    Walks scan headers, entropy-coded data and the tables between progressive scans; None when
    the file ends first (truncated). What follows EOI is not part of this image: extra MPO
    frames, maker trailers, motion-photo videos.
    """
    pos = scan_start
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from(">H", data, pos + 2)
        match = _ENTROPY_MARKER.search(data, pos + 2 + length)
        if match is None:
            return None
        if match.group(1) == b"\xd9":
            return match.end()
        pos = match.start()
    return None


def _jpeg_segment_bytes(marker: int, payload: bytes) -> bytes:
    if len(payload) > _MAX_SEGMENT_PAYLOAD:
        raise _Malformed("segment too large")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, payload, the chunk's original bytes) for every chunk up to and including IEND."""
    if not data.startswith(_PNG_SIGNATURE):
        raise _Malformed("not a PNG")
    chunks, pos = [], len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise _Malformed("truncated PNG chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise _Malformed("PNG chunk length out of range")
        chunks.append((kind, data[pos + 8 : end - 4], data[pos:end]))
        pos = end
        if kind == b"IEND":
            return chunks


def _png_chunk_bytes(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(fourcc, payload) for every chunk inside the RIFF container."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise _Malformed("not a WebP")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size
    if end > len(data) or riff_size < 4:
        raise _Malformed("RIFF size out of range")
    chunks, pos = [], 12
    while pos < end:
        if pos + 8 > end:
            raise _Malformed("truncated WebP chunk")
        fourcc, size = struct.unpack_from("<4sI", data, pos)
        if pos + 8 + size > end:
            raise _Malformed("WebP chunk length out of range")
        chunks.append((fourcc, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return chunks


def _webp_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        fourcc + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1) for fourcc, payload in chunks
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# --- PNG text chunks ----------------------------------------------------------------------------

_XMP_KEYWORD = b"XML:com.adobe.xmp"
_RAW_PROFILE = re.compile(rb"Raw profile type (exif|iptc|xmp|app1|8bim)\Z", re.IGNORECASE)


def _png_text(kind: bytes, payload: bytes) -> tuple[bytes, bytes]:
    """(keyword, text bytes) of a tEXt, zTXt or iTXt chunk."""
    keyword, sep, rest = payload.partition(b"\x00")
    if not sep:
        raise _Malformed("text chunk without keyword")
    if kind == b"tEXt":
        return keyword, rest
    if kind == b"zTXt":
        return keyword, _inflate(rest[1:])
    compressed = rest[:1] == b"\x01"
    _language, _, rest = rest[2:].partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return keyword, _inflate(text) if compressed else text


def _png_itxt_payload(keyword: bytes, text: bytes) -> bytes:
    return keyword + b"\x00\x00\x00\x00\x00" + text  # uncompressed, no language or translation


def _raw_profile_bytes(text: bytes) -> bytes:
    """ImageMagick's "Raw profile type" text: a name line, a length line, then hex digits."""
    lines = text.strip().split(b"\n")
    try:
        return bytes.fromhex(b"".join(lines[2:]).decode("ascii"))
    except ValueError as error:
        raise _Malformed("bad raw profile") from error


# --- gathering the metadata blocks for reading ---------------------------------------------------


@dataclass
class _Blocks:
    exif: list[bytes] = field(default_factory=list)  # TIFF structures, Exif header removed
    xmp: list[bytes] = field(default_factory=list)
    iim: list[bytes] = field(default_factory=list)  # IPTC IIM dataset streams


def _without_exif_header(raw: bytes) -> bytes:
    return raw[len(_EXIF_HEADER) :] if raw.startswith(_EXIF_HEADER) else raw


def _collect_blocks(data: bytes) -> _Blocks:
    blocks = _Blocks()
    if data.startswith(_JPEG_SOI):
        _collect_jpeg(data, blocks)
    elif data.startswith(_PNG_SIGNATURE):
        for kind, payload, _raw in _png_chunks(data):
            if kind == b"eXIf":
                blocks.exif.append(_without_exif_header(payload))
            elif kind in (b"tEXt", b"zTXt", b"iTXt"):
                _collect_png_text(kind, payload, blocks)
    elif data.startswith(b"RIFF"):
        for fourcc, payload in _webp_chunks(data):
            if fourcc == b"EXIF":
                blocks.exif.append(_without_exif_header(payload))
            elif fourcc == b"XMP ":
                blocks.xmp.append(payload)
    return blocks


def _collect_jpeg(data: bytes, blocks: _Blocks) -> None:
    for marker, payload in _jpeg_segments(data)[0]:
        if marker == _APP1 and payload.startswith(_EXIF_HEADER):
            blocks.exif.append(payload[len(_EXIF_HEADER) :])
        elif marker == _APP1 and payload.startswith(_XMP_HEADER):
            blocks.xmp.append(payload[len(_XMP_HEADER) :])
        elif marker == _APP13 and payload.startswith(_PHOTOSHOP_HEADER):
            _collect_irb(payload[len(_PHOTOSHOP_HEADER) :], blocks)


def _collect_png_text(kind: bytes, payload: bytes, blocks: _Blocks) -> None:
    try:
        keyword, text = _png_text(kind, payload)
        if keyword == _XMP_KEYWORD:
            blocks.xmp.append(text)
        elif match := _RAW_PROFILE.match(keyword):
            profile, raw = match.group(1).lower(), _raw_profile_bytes(text)
            if profile in (b"exif", b"app1") and raw.startswith(_EXIF_HEADER):
                blocks.exif.append(raw[len(_EXIF_HEADER) :])
            elif profile in (b"xmp", b"app1"):
                blocks.xmp.append(raw.removeprefix(_XMP_HEADER))
            elif raw.startswith(b"8BIM"):  # "iptc" / "8bim": Photoshop resources or bare IIM
                _collect_irb(raw, blocks)
            else:
                blocks.iim.append(raw)
    except _Malformed:
        pass  # an unreadable text chunk carries nothing we can report


def _collect_irb(irb: bytes, blocks: _Blocks) -> None:
    try:
        resources = _irb_resources(irb)
    except _Malformed:
        return
    for resource in resources:
        if resource.ident == _IRB_IPTC:
            blocks.iim.append(resource.data)


# --- Photoshop image resources (JPEG APP13) and IPTC IIM ---------------------------------------

_IRB_SIGNATURES = (b"8BIM", b"MeSa", b"PHUT", b"AgHg", b"DCSR")
_IRB_IPTC = 0x0404
_IRB_IPTC_DIGEST = 0x0425
_IRB_EXIF = 0x0422
_IRB_XMP = 0x0424
# IIM record 2 datasets that say where the photo was taken or what place it shows.
_IIM_LOCATION = {
    26: "location code",
    27: "location name",
    90: "city",
    92: "sub-location",
    95: "province/state",
    100: "country code",
    101: "country",
}
_IIM_BYLINE, _IIM_COPYRIGHT = 80, 116


@dataclass(frozen=True)
class _Resource:
    signature: bytes
    ident: int
    name: bytes  # the Pascal string, length byte and even padding included
    data: bytes

    def to_bytes(self) -> bytes:
        header = self.signature + struct.pack(">H", self.ident) + self.name + struct.pack(">I", len(self.data))
        return header + self.data + b"\x00" * (len(self.data) & 1)


def _irb_resources(irb: bytes) -> list[_Resource]:
    resources, pos = [], 0
    while pos < len(irb):
        if irb[pos:].strip(b"\x00") == b"":
            break  # some writers pad the block with zeros
        if pos + 7 > len(irb) or irb[pos : pos + 4] not in _IRB_SIGNATURES:
            raise _Malformed("bad image resource")
        (ident,) = struct.unpack_from(">H", irb, pos + 4)
        name_length = 1 + irb[pos + 6]
        name_length += name_length & 1
        size_at = pos + 6 + name_length
        if size_at + 4 > len(irb):
            raise _Malformed("truncated image resource")
        (size,) = struct.unpack_from(">I", irb, size_at)
        if size_at + 4 + size > len(irb):
            raise _Malformed("image resource length out of range")
        data = irb[size_at + 4 : size_at + 4 + size]
        resources.append(_Resource(irb[pos : pos + 4], ident, irb[pos + 6 : size_at], data))
        pos = size_at + 4 + size + (size & 1)
    return resources


def _iim_datasets(stream: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """(record, dataset, value, the dataset's original bytes) for an IPTC IIM stream."""
    datasets, pos = [], 0
    while pos < len(stream):
        if stream[pos] != 0x1C:
            if stream[pos:].strip(b"\x00") == b"":
                break
            raise _Malformed("bad IPTC dataset")
        if pos + 5 > len(stream):
            raise _Malformed("truncated IPTC dataset")
        record, dataset, length = stream[pos + 1], stream[pos + 2], struct.unpack_from(">H", stream, pos + 3)[0]
        start = pos + 5
        if length & 0x8000:  # extended dataset: the low bits give the size of the length field
            width = length & 0x7FFF
            if width > 4 or start + width > len(stream):
                raise _Malformed("bad IPTC extended length")
            length = int.from_bytes(stream[start : start + width], "big")
            start += width
        if start + length > len(stream):
            raise _Malformed("IPTC dataset length out of range")
        datasets.append((record, dataset, stream[start : start + length], stream[pos : start + length]))
        pos = start + length
    return datasets


def _iim_without_location(stream: bytes) -> tuple[bytes | None, list[str]]:
    """The stream minus location datasets, or None when it has none; raises _Malformed."""
    kept, removed = [], []
    for record, dataset, _value, raw in _iim_datasets(stream):
        if record == 2 and dataset in _IIM_LOCATION:
            removed.append(f"IPTC {_IIM_LOCATION[dataset]}")
        else:
            kept.append(raw)
    return (b"".join(kept), removed) if removed else (None, [])


# --- EXIF (TIFF structure) ------------------------------------------------------------------------

_TAG_GPS_IFD = 0x8825
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def _exif_without_location(raw: bytes) -> tuple[bytes | None, list[str]]:
    """Raw EXIF (with or without the Exif header) minus its GPS IFD, or None when it has none.

    Edits in place rather than re-serialising: the GPS entry is taken out of IFD0 (the
    directory keeps its position, so no other offset moves) and the GPS IFD with its values
    is zeroed. Maker notes, the thumbnail IFD and unknown tags, which hold absolute offsets a
    re-serialiser would break or drop, survive untouched.
    """
    header = _EXIF_HEADER if raw.startswith(_EXIF_HEADER) else b""
    tiff = bytearray(raw[len(header) :])
    if len(tiff) < 8:
        raise _Malformed("EXIF block too short")
    if tiff[:4] == b"II*\x00":
        endian = "<"
    elif tiff[:4] == b"MM\x00*":
        endian = ">"
    else:
        raise _Malformed("not a TIFF structure")
    found = False
    ifd = struct.unpack_from(endian + "I", tiff, 4)[0]
    for _ in range(2):  # IFD0 holds the GPS pointer; IFD1 (thumbnail) should not, but check
        if ifd == 0:
            break
        while _remove_gps_entry(tiff, ifd, endian):  # a hostile file may repeat the entry
            found = True
        count = _ifd_entry_count(tiff, ifd, endian)
        ifd = struct.unpack_from(endian + "I", tiff, ifd + 2 + 12 * count)[0]
    return (header + bytes(tiff), ["EXIF GPS position"]) if found else (None, [])


def _ifd_entry_count(tiff: bytearray, ifd: int, endian: str) -> int:
    if ifd + 2 > len(tiff):
        raise _Malformed("IFD offset out of range")
    count = struct.unpack_from(endian + "H", tiff, ifd)[0]
    if ifd + 2 + 12 * count + 4 > len(tiff):
        raise _Malformed("IFD runs past the EXIF block")
    return count


def _remove_gps_entry(tiff: bytearray, ifd: int, endian: str) -> bool:
    count = _ifd_entry_count(tiff, ifd, endian)
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if struct.unpack_from(endian + "H", tiff, entry)[0] != _TAG_GPS_IFD:
            continue
        _zero_ifd(tiff, struct.unpack_from(endian + "I", tiff, entry + 8)[0], endian)
        end = ifd + 2 + 12 * count + 4  # entries and the next-IFD pointer
        tiff[entry : end - 12] = tiff[entry + 12 : end]
        tiff[end - 12 : end] = bytes(12)
        struct.pack_into(endian + "H", tiff, ifd, count - 1)
        return True
    return False


def _zero_ifd(tiff: bytearray, ifd: int, endian: str) -> None:
    """Blank a directory and its out-of-line values so no coordinates linger as orphan bytes."""
    try:
        count = _ifd_entry_count(tiff, ifd, endian)
    except _Malformed:
        return  # the pointer leads nowhere: nothing readable to blank
    for index in range(count):
        kind, items, offset = struct.unpack_from(endian + "HII", tiff, ifd + 2 + 12 * index + 2)
        size = _TIFF_TYPE_SIZES.get(kind, 1) * items
        if size > 4 and offset + size <= len(tiff):
            tiff[offset : offset + size] = bytes(size)
    tiff[ifd : ifd + 2 + 12 * count + 4] = bytes(2 + 12 * count + 4)


def _read_exif(tiff: bytes) -> dict[str, object]:
    """The EXIF fields we report, read with Pillow; {} when the block is unreadable."""
    exif = Image.Exif()
    try:
        exif.load(_EXIF_HEADER + tiff)
        sub_ifd = exif.get_ifd(0x8769)
        return {
            "artist": _clean_text(exif.get(0x013B, "")),
            "copyright": _clean_text(exif.get(0x8298, "")),
            "camera_make": _clean_text(exif.get(0x010F, "")),
            "camera_model": _clean_text(exif.get(0x0110, "")),
            "orientation": exif.get(0x0112, 1),
            "has_gps": _TAG_GPS_IFD in exif,
            "lens_model": _clean_text(sub_ifd.get(0xA434, "")),
            "captured_at": _exif_datetime(sub_ifd.get(0x9003), sub_ifd.get(0x9011)),
        }
    except Exception:  # Pillow raises many kinds on corrupt EXIF; never fail an upload on it
        return {}


def _exif_datetime(value: object, offset: object) -> datetime | None:
    """DateTimeOriginal, aware when OffsetTimeOriginal (EXIF 2.31) says which zone it is in."""
    try:
        moment = datetime.strptime(_clean_text(value or ""), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # blank ("    :  :     ") or invalid
    try:
        return moment.replace(tzinfo=datetime.strptime(_clean_text(offset or ""), "%z").tzinfo)
    except ValueError:
        return moment  # no usable offset: camera clock time, zone unknown


# --- XMP --------------------------------------------------------------------------------------

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_DC = "http://purl.org/dc/elements/1.1/"
_PLUS = "http://ns.useplus.org/ldf/xmp/1.0/"
_PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
_IPTC_CORE = "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_XMP_LOCATION = {
    f"{{{_PHOTOSHOP}}}City",
    f"{{{_PHOTOSHOP}}}State",
    f"{{{_PHOTOSHOP}}}Country",
    f"{{{_IPTC_CORE}}}Location",
    f"{{{_IPTC_CORE}}}CountryCode",
    f"{{{_IPTC_EXT}}}LocationCreated",
    f"{{{_IPTC_EXT}}}LocationShown",
}
_XMP_PREFIXES = {
    "x": "adobe:ns:meta/",
    "rdf": _RDF,
    "dc": _DC,
    "plus": _PLUS,
    "photoshop": _PHOTOSHOP,
    "Iptc4xmpCore": _IPTC_CORE,
    "Iptc4xmpExt": _IPTC_EXT,
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpRights": "http://ns.adobe.com/xap/1.0/rights/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
    "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "exifEX": "http://cipa.jp/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
    "photomechanic": "http://ns.camerabits.com/photomechanic/1.0/",
    "xmpDM": "http://ns.adobe.com/xmp/1.0/DynamicMedia/",
}
for _prefix, _uri in _XMP_PREFIXES.items():
    ET.register_namespace(_prefix, _uri)  # so rewritten packets keep the familiar prefixes
_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_XPACKET_END = '\n<?xpacket end="w"?>'


def _parse_xmp(packet: bytes) -> ET.Element:
    try:
        return parse_untrusted_xml(packet.rstrip(b"\x00 \t\r\n"))
    except (ET.ParseError, ValueError) as error:  # defusedxml's refusals are ValueErrors
        raise _Malformed("unreadable XMP") from error


def _is_location_name(name: str) -> bool:
    return name in _XMP_LOCATION or name.rpartition("}")[2].startswith("GPS")


def _has_xmp_location(root: ET.Element) -> bool:
    return any(
        _is_location_name(element.tag) or any(_is_location_name(name) for name in element.attrib)
        for element in root.iter()
        if isinstance(element.tag, str)
    )


def _xmp_without_location(packet: bytes) -> tuple[bytes | None, list[str]]:
    """The packet minus location properties, or None when it has none; raises _Malformed."""
    root = _parse_xmp(packet)
    if not _has_xmp_location(root):
        return None, []
    for element in list(root.iter()):
        for name in [name for name in element.attrib if _is_location_name(name)]:
            del element.attrib[name]
        for child in [child for child in element if _is_location_name(child.tag)]:
            element.remove(child)
    xml = ET.tostring(root, encoding="unicode")
    return (_XPACKET_BEGIN + xml + _XPACKET_END).encode("utf-8"), ["XMP location"]


def _xmp_values(root: ET.Element, namespace: str, name: str) -> list[tuple[str, str]]:
    """(language, text) pairs of a property, whichever RDF form it was written in."""
    qualified = f"{{{namespace}}}{name}"
    for description in root.iter(f"{{{_RDF}}}Description"):
        if qualified in description.attrib:
            return [("", description.attrib[qualified])]
        prop = description.find(qualified)
        if prop is None:
            continue
        items = prop.findall(f"{{{_RDF}}}*/{{{_RDF}}}li")  # rdf:Seq, rdf:Bag or rdf:Alt
        if items:
            return [(item.get(_XML_LANG, ""), item.text or "") for item in items]
        return [("", prop.get(f"{{{_RDF}}}resource", prop.text or ""))]
    return []


def _read_xmp(root: ET.Element) -> dict[str, object]:
    creators = [text.strip() for _, text in _xmp_values(root, _DC, "creator") if text.strip()]
    rights = [(lang, text.strip()) for lang, text in _xmp_values(root, _DC, "rights") if text.strip()]
    preferred = [text for lang, text in rights if lang.lower() == "x-default"] or [text for _, text in rights]
    mining = [text for _, text in _xmp_values(root, _PLUS, "DataMining") if text.strip()]
    return {
        "creator": ", ".join(creators),
        "copyright": preferred[0] if preferred else "",
        "data_mining": _data_mining_code(mining[0]) if mining else "",
        "has_location": _has_xmp_location(root),
    }


def _data_mining_code(value: str) -> str:
    """http://ns.useplus.org/ldf/vocab/DMI-ALLOWED, 'plus:DMI-ALLOWED' or 'dmi-allowed' -> DMI-ALLOWED."""
    return re.split(r"[/#:]", value.strip())[-1].strip().upper()


# --- reading --------------------------------------------------------------------------------------


def read_embedded_metadata(data: bytes) -> EmbeddedMetadata:
    """Rights, camera and location facts embedded in JPEG, PNG or WebP bytes.

    Precedence follows the IPTC/MWG guidance: XMP first, then IPTC IIM, then EXIF. Anything
    malformed is skipped, so an upload with broken metadata still gets what could be read.
    """
    try:
        blocks = _collect_blocks(data)
    except _Malformed:
        return EmbeddedMetadata()
    exif = next((fields for fields in map(_read_exif, blocks.exif) if fields), {})
    xmp = _first_readable_xmp(blocks.xmp)
    iptc = _read_iim(blocks.iim)
    data_mining = str(xmp.get("data_mining", ""))
    orientation = exif.get("orientation", 1)
    return EmbeddedMetadata(
        creator=str(xmp.get("creator") or iptc["creator"] or exif.get("artist", "")),
        copyright=str(xmp.get("copyright") or iptc["copyright"] or exif.get("copyright", "")),
        data_mining=data_mining,
        ai_training_prohibited=data_mining.startswith(_PROHIBITING_PREFIX),
        camera_make=str(exif.get("camera_make", "")),
        camera_model=str(exif.get("camera_model", "")),
        lens_model=str(exif.get("lens_model", "")),
        captured_at=exif.get("captured_at"),  # type: ignore[arg-type]
        orientation=orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1,
        has_location=bool(exif.get("has_gps") or xmp.get("has_location") or iptc["has_location"]),
    )


def _first_readable_xmp(packets: list[bytes]) -> dict[str, object]:
    for packet in packets:
        try:
            return _read_xmp(_parse_xmp(packet))
        except _Malformed:
            continue
    return {}


def _read_iim(streams: list[bytes]) -> dict[str, object]:
    bylines, copyrights, has_location = [], [], False
    for stream in streams:
        try:
            datasets = _iim_datasets(stream)
        except _Malformed:
            continue
        for record, dataset, value, _raw in datasets:
            if record != 2:
                continue
            if dataset == _IIM_BYLINE:
                bylines.append(_clean_text(value))
            elif dataset == _IIM_COPYRIGHT:
                copyrights.append(_clean_text(value))
            has_location |= dataset in _IIM_LOCATION
    return {
        "creator": ", ".join(name for name in bylines if name),
        "copyright": next((text for text in copyrights if text), ""),
        "has_location": has_location,
    }


# --- stripping --------------------------------------------------------------------------------


def strip_location(data: bytes) -> StrippedCopy:
    """A copy of the image without GPS or other location metadata, pixels untouched.

    The container is rewritten block by block; the compressed image data is copied byte for
    byte. Metadata blocks that cannot be parsed are dropped whole. Only when the container
    itself cannot be walked is the image re-encoded without any metadata (lossless=False).
    Raises ValueError when the bytes are not a decodable image at all.
    """
    try:
        if data.startswith(_JPEG_SOI):
            removed, rewritten = _strip_jpeg(data)
        elif data.startswith(_PNG_SIGNATURE):
            removed, rewritten = _strip_png(data)
        elif data.startswith(b"RIFF"):
            removed, rewritten = _strip_webp(data)
        else:
            raise _Malformed("unknown container")
    except _Malformed:
        return _reencoded_without_metadata(data)
    if not removed:
        return StrippedCopy(data=data, removed=(), lossless=True)
    return StrippedCopy(data=rewritten, removed=_dedupe(removed), lossless=True)


def _strip_jpeg(data: bytes) -> tuple[list[str], bytes]:
    segments, scan_start = _jpeg_segments(data)
    image_end = _jpeg_image_end(data, scan_start) or len(data)
    # Data after EOI (other MPO frames, trailers, embedded videos) has metadata of its own that
    # we do not parse: the still image is what gets delivered, so it goes, with the MPO index.
    drop_trailer = bool(data[image_end:].strip(b"\x00\r\n\t "))
    removed: list[str] = ["data after the end of the image"] if drop_trailer else []
    out = [_JPEG_SOI]
    for marker, payload in segments:
        if drop_trailer and marker == _APP2 and payload.startswith(_MPF_HEADER):
            continue
        replacement, what = _jpeg_segment_without_location(marker, payload)
        removed += what
        if not what:
            out.append(_jpeg_segment_bytes(marker, payload))
        elif replacement is not None:
            out.append(replacement)
    out.append(data[scan_start : image_end if drop_trailer else len(data)])  # scans: byte for byte
    return removed, b"".join(out)


# Photoshop keeps copies of IPTC, EXIF and XMP among its image resources: each is cleaned too.
_RESOURCE_TRANSFORMS = {
    _IRB_IPTC: _iim_without_location,
    _IRB_EXIF: _exif_without_location,
    _IRB_XMP: _xmp_without_location,
}


def _irb_without_location(irb: bytes) -> tuple[bytes | None, list[str]]:
    """The resource block minus location, or None when it has none; raises _Malformed."""
    kept, removed, iptc_changed = [], [], False
    for resource in _irb_resources(irb):
        replacement, what = _resource_without_location(resource)
        removed += what
        iptc_changed |= bool(what) and resource.ident == _IRB_IPTC
        if replacement is not None:
            kept.append(replacement)
    if not removed:
        return None, []
    if iptc_changed:
        # The digest is an MD5 of the IPTC block we just changed: a stale one makes
        # Photoshop-aware tools distrust the IPTC data.
        kept = [resource for resource in kept if resource.ident != _IRB_IPTC_DIGEST]
        removed.append("IPTC digest")
    return b"".join(resource.to_bytes() for resource in kept), removed


def _resource_without_location(resource: _Resource) -> tuple[_Resource | None, list[str]]:
    """(the resource to keep or None, what was removed) for one Photoshop image resource."""
    transform = _RESOURCE_TRANSFORMS.get(resource.ident)
    if transform is None:
        return resource, []
    try:
        data, removed = transform(resource.data)
    except _Malformed:
        return None, [f"unreadable Photoshop resource {resource.ident:#06x}"]
    if data is None:
        return resource, []
    return _Resource(resource.signature, resource.ident, resource.name, data), removed


_JPEG_RULES = (
    (_APP1, _EXIF_HEADER, _exif_without_location, "EXIF block"),
    (_APP1, _XMP_HEADER, _xmp_without_location, "XMP packet"),
    (_APP13, _PHOTOSHOP_HEADER, _irb_without_location, "Photoshop/IPTC block"),
)


def _jpeg_segment_without_location(marker: int, payload: bytes) -> tuple[bytes | None, list[str]]:
    """(the segment's new bytes or None, what was removed); nothing removed keeps the segment."""
    if marker == _APP1 and payload.startswith(_EXTENDED_XMP_HEADER):
        # Extended XMP is split over segments behind an MD5 of the whole; not worth rewriting.
        return None, ["extended XMP"]
    for rule_marker, header, transform, label in _JPEG_RULES:
        if marker != rule_marker or not payload.startswith(header):
            continue
        try:
            new_body, removed = transform(payload[len(header) :])
            return (None if new_body is None else _jpeg_segment_bytes(marker, header + new_body)), removed
        except _Malformed:
            return None, [f"unreadable {label}"]  # also: a rewrite too large for one segment
    return None, []


def _strip_png(data: bytes) -> tuple[list[str], bytes]:
    removed: list[str] = []
    out = [_PNG_SIGNATURE]
    for kind, payload, raw in _png_chunks(data):
        replacement, what = _png_chunk_without_location(kind, payload)
        removed += what
        if not what:
            out.append(raw)  # untouched chunks keep their bytes, CRC included
        elif replacement is not None:
            out.append(replacement)
    return removed, b"".join(out)


def _png_chunk_without_location(kind: bytes, payload: bytes) -> tuple[bytes | None, list[str]]:
    """(the chunk's new bytes or None, what was removed); nothing removed keeps the chunk."""
    if kind == b"eXIf":
        try:
            new_exif, removed = _exif_without_location(payload)
        except _Malformed:
            return None, ["unreadable EXIF block"]
        return (None if new_exif is None else _png_chunk_bytes(kind, new_exif)), removed
    if kind not in (b"tEXt", b"zTXt", b"iTXt"):
        return None, []
    keyword = payload.partition(b"\x00")[0]
    if _RAW_PROFILE.match(keyword):
        # ImageMagick's hex-encoded copies of EXIF/IPTC/XMP: dropped rather than decoded and
        # rewritten; the same data normally also sits in eXIf / iTXt.
        return None, [keyword.decode("latin-1")]
    return _png_xmp_without_location(kind, payload) if keyword == _XMP_KEYWORD else (None, [])


def _png_xmp_without_location(kind: bytes, payload: bytes) -> tuple[bytes | None, list[str]]:
    try:
        new_packet, removed = _xmp_without_location(_png_text(kind, payload)[1])
    except _Malformed:
        return None, ["unreadable XMP packet"]
    if new_packet is None:
        return None, []
    # Rewritten as uncompressed iTXt, the form the XMP specification asks for in PNG.
    return _png_chunk_bytes(b"iTXt", _png_itxt_payload(_XMP_KEYWORD, new_packet)), removed


# WebP chunk -> (transform, label when unreadable, its VP8X feature flag).
_WEBP_RULES = {
    b"EXIF": (_exif_without_location, "unreadable EXIF block", 0x08),
    b"XMP ": (_xmp_without_location, "unreadable XMP packet", 0x04),
}


def _strip_webp(data: bytes) -> tuple[list[str], bytes]:
    removed: list[str] = []
    kept: list[tuple[bytes, bytes]] = []
    cleared_flags = 0
    for fourcc, payload in _webp_chunks(data):
        rule = _WEBP_RULES.get(fourcc)
        if rule is None:
            kept.append((fourcc, payload))
            continue
        transform, unreadable, flag = rule
        try:
            new_payload, what = transform(payload)
        except _Malformed:
            removed.append(unreadable)
            cleared_flags |= flag  # the chunk is gone: the header must stop announcing it
            continue
        removed += what
        kept.append((fourcc, payload if new_payload is None else new_payload))
    if cleared_flags:
        kept = [
            (fourcc, _vp8x_without(payload, cleared_flags) if fourcc == b"VP8X" else payload)
            for fourcc, payload in kept
        ]
    return removed, _webp_bytes(kept)


def _vp8x_without(payload: bytes, flags: int) -> bytes:
    return bytes((payload[0] & ~flags & 0xFF,)) + payload[1:] if payload else payload


def _reencoded_without_metadata(data: bytes) -> StrippedCopy:
    """Last resort for containers we cannot walk: decode and write pixels only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            oriented = ImageOps.exif_transpose(image)  # the orientation tag is about to be lost
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError("The file is not a readable image.") from error
    oriented.info = {}  # Pillow would otherwise carry comments and profiles across
    out = io.BytesIO()
    if image_format == "PNG":
        oriented.save(out, "PNG")
    elif image_format == "WEBP":
        oriented.save(out, "WEBP", quality=95)
    else:
        oriented.convert("RGB").save(out, "JPEG", quality=95)
    return StrippedCopy(data=out.getvalue(), removed=("all metadata (image re-encoded)",), lossless=False)
