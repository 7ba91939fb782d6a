"""Reading rights/camera metadata and stripping location from real photos (no Django needed).

The photos come from scikit-image; EXIF, XMP and IPTC are written the way cameras and photo
tools write them. Where possible the results are checked with an independent reader (Pillow).
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image, IptcImagePlugin
from PIL.PngImagePlugin import PngInfo
from skimage import data as skdata

from marketplace.catalog.imagemeta import (
    DATA_MINING_CODES,
    EmbeddedMetadata,
    read_embedded_metadata,
    strip_location,
)

GPS_IFD, EXIF_IFD = 0x8825, 0x8769
LATITUDE = (48.0, 51.0, 29.5)  # Paris; written as RATIONALs 48/1 51/1 59/2


# --- building test images -------------------------------------------------------------------


def photo(name: str = "astronaut") -> Image.Image:
    return Image.fromarray(getattr(skdata, name)())


def camera_exif(*, gps: bool = True, orientation: int = 1, artist: str = "", copyright_: str = "") -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon\x00", "  EOS R5 ", orientation
    if artist:
        exif[0x013B] = artist
    if copyright_:
        exif[0x8298] = copyright_
    sub_ifd = exif.get_ifd(EXIF_IFD)
    sub_ifd[0x9003], sub_ifd[0x9011], sub_ifd[0xA434] = "2024:05:17 14:03:22", "+02:00", "RF24-105mm F4 L IS USM"
    if gps:
        gps_ifd = exif.get_ifd(GPS_IFD)
        gps_ifd[1], gps_ifd[2], gps_ifd[3], gps_ifd[4] = "N", LATITUDE, "E", (2.0, 17.0, 40.2)
    return exif.tobytes()


def latitude_bytes() -> list[bytes]:
    """The GPS latitude as it sits in an EXIF block, in either byte order."""
    return [struct.pack(order + "6I", 48, 1, 51, 1, 59, 2) for order in "<>"]


NAMESPACES = (
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
    'xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:Iptc4xmpCore="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
)
CREATOR_AND_RIGHTS = (
    "<dc:creator><rdf:Seq><rdf:li>Ada Lovelace</rdf:li><rdf:li>Bob Ross</rdf:li></rdf:Seq></dc:creator>"
    '<dc:rights><rdf:Alt><rdf:li xml:lang="fr">Tous droits réservés</rdf:li>'
    '<rdf:li xml:lang="x-default">(c) 2024 Ada Lovelace</rdf:li></rdf:Alt></dc:rights>'
)
LOCATION = (
    "<photoshop:City>Paris</photoshop:City><photoshop:Country>France</photoshop:Country>"
    "<exif:GPSLongitude>2,17.67E</exif:GPSLongitude>"
    "<Iptc4xmpExt:LocationShown><rdf:Bag><rdf:li rdf:parseType='Resource'>"
    "<Iptc4xmpExt:City>Paris</Iptc4xmpExt:City></rdf:li></rdf:Bag></Iptc4xmpExt:LocationShown>"
)


def xmp(body: str = "", attributes: str = "") -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF {NAMESPACES}>'
        f'<rdf:Description rdf:about="" {attributes}>{body}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


FULL_XMP = xmp(
    CREATOR_AND_RIGHTS + LOCATION,
    'plus:DataMining="http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING" exif:GPSLatitude="48,51.49N"',
)


def jpeg(image: Image.Image | None = None, **save_options) -> bytes:
    out = io.BytesIO()
    (image or photo()).save(out, "JPEG", quality=90, **save_options)
    return out.getvalue()


def iptc_dataset(dataset: int, value: str) -> bytes:
    raw = value.encode("utf-8")
    return b"\x1c\x02" + bytes((dataset,)) + struct.pack(">H", len(raw)) + raw


def photoshop_resource(ident: int, payload: bytes) -> bytes:
    padding = b"\x00" * (len(payload) & 1)
    return b"8BIM" + struct.pack(">H", ident) + b"\x00\x00" + struct.pack(">I", len(payload)) + payload + padding


def with_segment(jpeg_bytes: bytes, marker: int, payload: bytes) -> bytes:
    """The JPEG with one more marker segment right after SOI."""
    return jpeg_bytes[:2] + bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload + jpeg_bytes[2:]


def with_iptc(jpeg_bytes: bytes, *datasets: bytes) -> bytes:
    iim = b"".join(datasets)
    irb = (
        photoshop_resource(0x03ED, b"\x00\x48\x00\x00\x00\x01\x00\x01\x00\x48\x00\x00\x00\x01\x00\x01")  # resolution
        + photoshop_resource(0x0404, iim)
        + photoshop_resource(0x0425, b"\x11" * 16)  # digest of the IPTC block
    )
    return with_segment(jpeg_bytes, 0xED, b"Photoshop 3.0\x00" + irb)


def scan_data(jpeg_bytes: bytes) -> bytes:
    """Everything from the first SOS marker on: the compressed pixels."""
    return jpeg_bytes[jpeg_bytes.index(b"\xff\xda") :]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))


def assert_no_gps(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        assert GPS_IFD not in exif and exif.get_ifd(GPS_IFD) == {}
    assert not any(latitude in data for latitude in latitude_bytes()), "coordinates left as orphan bytes"
    for trace in (b"GPSLatitude", b"GPSLongitude", b"Paris", b"France"):
        assert trace not in data
    assert read_embedded_metadata(data).has_location is False


@pytest.fixture(scope="module")
def tagged_jpeg() -> bytes:
    return with_iptc(
        jpeg(exif=camera_exif(), xmp=FULL_XMP),
        iptc_dataset(80, "IPTC Byline"),
        iptc_dataset(116, "IPTC Copyright"),
        iptc_dataset(90, "Paris"),
        iptc_dataset(101, "France"),
        iptc_dataset(100, "FRA"),
    )


# --- reading ------------------------------------------------------------------------------------


def test_reads_rights_and_camera_fields_from_a_tagged_jpeg(tagged_jpeg):
    meta = read_embedded_metadata(tagged_jpeg)

    assert meta.creator == "Ada Lovelace, Bob Ross"  # XMP wins over IPTC and EXIF
    assert meta.copyright == "(c) 2024 Ada Lovelace"  # x-default preferred over French
    assert meta.data_mining == "DMI-PROHIBITED-AIMLTRAINING"
    assert meta.ai_training_prohibited is True
    assert (meta.camera_make, meta.camera_model) == ("Canon", "EOS R5")  # NULs and padding gone
    assert meta.lens_model == "RF24-105mm F4 L IS USM"
    assert meta.captured_at == datetime(2024, 5, 17, 14, 3, 22, tzinfo=timezone(timedelta(hours=2)))
    assert meta.orientation == 1
    assert meta.has_location is True


def test_capture_time_without_offset_is_naive():
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[0x9003] = "2021:12:31 23:59:01"

    meta = read_embedded_metadata(jpeg(exif=exif.tobytes()))

    assert meta.captured_at == datetime(2021, 12, 31, 23, 59, 1)
    assert meta.captured_at.tzinfo is None
    assert meta.has_location is False


def test_iptc_byline_and_copyright_are_used_without_xmp():
    data = with_iptc(
        jpeg(exif=camera_exif(artist="Exif Artist")),
        iptc_dataset(80, "Zoë Photographer"),
        iptc_dataset(80, "Second Byline"),
        iptc_dataset(116, "© Zoë"),
    )

    meta = read_embedded_metadata(data)

    assert meta.creator == "Zoë Photographer, Second Byline"
    assert meta.copyright == "© Zoë"


def test_exif_artist_and_copyright_are_the_last_resort():
    meta = read_embedded_metadata(jpeg(exif=camera_exif(artist="Exif Artist", copyright_="Exif Rights", gps=False)))

    assert (meta.creator, meta.copyright) == ("Exif Artist", "Exif Rights")
    assert meta.data_mining == "" and meta.ai_training_prohibited is False


@pytest.mark.parametrize(
    ("xmp_packet", "expected_code"),
    [
        (xmp(attributes='plus:DataMining="http://ns.useplus.org/ldf/vocab/DMI-ALLOWED"'), "DMI-ALLOWED"),
        (xmp(attributes='plus:DataMining="DMI-PROHIBITED-GENAIMLTRAINING"'), "DMI-PROHIBITED-GENAIMLTRAINING"),
        (xmp("<plus:DataMining>http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED</plus:DataMining>"), "DMI-PROHIBITED"),
        (xmp('<plus:DataMining rdf:resource="http://ns.useplus.org/ldf/vocab/DMI-UNSPECIFIED"/>'), "DMI-UNSPECIFIED"),
        (xmp("<plus:DataMining> dmi-prohibited-seeconstraint </plus:DataMining>"), "DMI-PROHIBITED-SEECONSTRAINT"),
    ],
    ids=["attribute-uri", "attribute-code", "element-uri", "resource-uri", "element-lowercase"],
)
def test_data_mining_is_read_in_every_rdf_form(xmp_packet, expected_code):
    assert read_embedded_metadata(jpeg(xmp=xmp_packet)).data_mining == expected_code


@pytest.mark.parametrize("code", DATA_MINING_CODES)
def test_only_prohibiting_codes_forbid_ai_training(code):
    packet = xmp(attributes=f'plus:DataMining="http://ns.useplus.org/ldf/vocab/{code}"')

    meta = read_embedded_metadata(jpeg(xmp=packet))

    assert meta.data_mining == code
    assert meta.ai_training_prohibited is (code not in ("DMI-UNSPECIFIED", "DMI-ALLOWED"))


def test_reads_png_and_webp_metadata():
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", FULL_XMP.decode("utf-8"))
    png = io.BytesIO()
    photo("coffee").save(png, "PNG", exif=camera_exif(), pnginfo=info)
    webp = io.BytesIO()
    photo("coffee").save(webp, "WEBP", exif=camera_exif(), xmp=FULL_XMP)

    for data in (png.getvalue(), webp.getvalue()):
        meta = read_embedded_metadata(data)
        assert meta.creator == "Ada Lovelace, Bob Ross"
        assert meta.ai_training_prohibited is True
        assert meta.lens_model == "RF24-105mm F4 L IS USM"
        assert meta.has_location is True


def test_malformed_xmp_does_not_hide_the_rest():
    broken = b"<x:xmpmeta><rdf:RDF><rdf:Description dc:creator='unclosed'></x:xmpmeta>"

    meta = read_embedded_metadata(jpeg(exif=camera_exif(artist="Exif Artist"), xmp=broken))

    assert meta.creator == "Exif Artist"
    assert meta.camera_model == "EOS R5"


def test_hostile_xml_in_xmp_is_refused_not_expanded():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="&c;"/></rdf:RDF></x:xmpmeta>'
    )
    data = jpeg(xmp=bomb)

    assert read_embedded_metadata(data).creator == ""
    stripped = strip_location(data)
    assert b"<!ENTITY" not in stripped.data and "unreadable XMP packet" in stripped.removed


@pytest.mark.parametrize(
    "exif_payload",
    [
        b"Exif\x00\x00MM\x00*\x00\x00\xff\xff",
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x01",
        b"Exif\x00\x00garbage",
    ],
    ids=["ifd-offset-out-of-range", "entry-count-past-end", "not-tiff"],
)
def test_corrupt_exif_is_ignored_when_reading_and_dropped_when_stripping(exif_payload):
    data = with_segment(jpeg(xmp=xmp(CREATOR_AND_RIGHTS)), 0xE1, exif_payload)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corruption made on purpose
        assert read_embedded_metadata(data).creator == "Ada Lovelace, Bob Ross"
        stripped = strip_location(data)
        assert stripped.removed == ("unreadable EXIF block",)
        assert stripped.lossless and np.array_equal(pixels(stripped.data), pixels(data))


def test_garbage_and_empty_bytes_read_as_no_metadata():
    for data in (b"", b"not an image at all", b"\xff\xd8\xff\xe1\xff\xff", b"\x89PNG\r\n\x1a\n\x00"):
        assert read_embedded_metadata(data) == EmbeddedMetadata()


# --- stripping JPEG ------------------------------------------------------------------------------


def test_jpeg_delivery_loses_location_and_keeps_everything_else(tagged_jpeg):
    stripped = strip_location(tagged_jpeg)

    assert stripped.lossless is True
    assert_no_gps(stripped.data)
    assert np.array_equal(pixels(stripped.data), pixels(tagged_jpeg))
    assert scan_data(stripped.data) == scan_data(tagged_jpeg)  # not recompressed: same bytes
    assert {"EXIF GPS position", "XMP location", "IPTC city", "IPTC country", "IPTC digest"} <= set(stripped.removed)
    with Image.open(io.BytesIO(stripped.data)) as image:
        exif = image.getexif()
        sub_ifd = exif.get_ifd(EXIF_IFD)
        iptc = IptcImagePlugin.getiptcinfo(image)
        resources = image.info["photoshop"]
    assert exif[0x010F].strip("\x00") == "Canon"
    assert sub_ifd[0x9003] == "2024:05:17 14:03:22" and sub_ifd[0xA434] == "RF24-105mm F4 L IS USM"
    assert iptc[(2, 80)] == b"IPTC Byline" and iptc[(2, 116)] == b"IPTC Copyright"
    assert not {(2, 90), (2, 100), (2, 101)} & set(iptc)
    assert 0x0425 not in resources and 0x03ED in resources  # stale digest gone, others kept


def test_rights_survive_stripping(tagged_jpeg):
    before, after = read_embedded_metadata(tagged_jpeg), read_embedded_metadata(strip_location(tagged_jpeg).data)

    assert after.has_location is False
    assert (after.creator, after.copyright, after.data_mining) == (before.creator, before.copyright, before.data_mining)
    assert (after.camera_model, after.lens_model, after.captured_at) == (
        before.camera_model,
        before.lens_model,
        before.captured_at,
    )


def test_rewritten_xmp_is_a_well_formed_packet(tagged_jpeg):
    with Image.open(io.BytesIO(strip_location(tagged_jpeg).data)) as image:
        packet = image.info["xmp"]
        parsed = image.getxmp()

    assert packet.startswith(b"<?xpacket begin=") and packet.endswith(b'<?xpacket end="w"?>')
    assert b"<dc:creator>" in packet and b"xmlns:plus=" in packet  # familiar prefixes kept
    assert "City" not in str(parsed) and "LocationShown" not in str(parsed)


def test_jpeg_without_location_is_returned_unchanged():
    data = with_iptc(jpeg(exif=camera_exif(gps=False), xmp=xmp(CREATOR_AND_RIGHTS)), iptc_dataset(80, "Someone"))

    stripped = strip_location(data)

    assert stripped.data is data and stripped.removed == () and stripped.lossless


def test_extended_xmp_is_dropped():
    extended = b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + struct.pack(">II", 9, 0) + b"<gps:x/>"
    data = with_segment(jpeg(), 0xE1, extended)

    stripped = strip_location(data)

    assert stripped.removed == ("extended XMP",)
    assert b"xmp/extension" not in stripped.data


def test_a_second_picture_after_the_image_is_dropped_with_its_gps():
    """Multi-picture files and trailers carry their own metadata, which we do not parse."""
    primary = jpeg(exif=camera_exif(gps=False))
    data = primary + jpeg(photo("chelsea"), exif=camera_exif())

    stripped = strip_location(data)

    assert stripped.data == primary and stripped.removed == ("data after the end of the image",)


def test_progressive_jpeg_keeps_its_scans():
    data = jpeg(exif=camera_exif(), progressive=True)

    stripped = strip_location(data)

    assert scan_data(stripped.data) == scan_data(data)
    assert_no_gps(stripped.data)


def test_unwalkable_jpeg_is_reencoded_without_any_metadata():
    # Junk between segments: decoders skip it, a strict segment walk cannot.
    data = jpeg(photo("chelsea"), exif=camera_exif(orientation=6), xmp=FULL_XMP)
    tables = data.index(b"\xff\xdb")
    data = data[:tables] + b"\x00junk" + data[tables:]

    stripped = strip_location(data)

    assert stripped.lossless is False and stripped.removed == ("all metadata (image re-encoded)",)
    assert_no_gps(stripped.data)
    with Image.open(io.BytesIO(stripped.data)) as image:
        assert image.size == (300, 451)  # turned upright, since the orientation tag is gone
        assert not image.getexif() and "xmp" not in image.info


def test_strip_refuses_bytes_that_are_no_image():
    with pytest.raises(ValueError, match="not a readable image"):
        strip_location(b"definitely not an image")


# --- stripping PNG and WebP ---------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        payload = data[pos + 8 : pos + 8 + length]
        chunks.append((kind, payload, struct.unpack_from(">I", data, pos + 8 + length)[0]))
        pos += 12 + length
    return chunks


def test_png_delivery_loses_location_with_valid_chunks():
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", FULL_XMP.decode("utf-8"), zip=True)
    info.add_text("Raw profile type exif", "\nexif\n      10\n457869660000deadbeef\n")
    info.add_text("Title", "Kept")
    out = io.BytesIO()
    photo("coffee").convert("RGBA").save(out, "PNG", exif=camera_exif(), pnginfo=info)
    data = out.getvalue()

    stripped = strip_location(data)

    assert stripped.lossless and set(stripped.removed) == {"EXIF GPS position", "XMP location", "Raw profile type exif"}
    assert_no_gps(stripped.data)
    assert all(zlib.crc32(kind + payload) == crc for kind, payload, crc in png_chunks(stripped.data))
    assert np.array_equal(pixels(stripped.data), pixels(data))
    meta = read_embedded_metadata(stripped.data)
    assert meta.creator == "Ada Lovelace, Bob Ross" and meta.lens_model == "RF24-105mm F4 L IS USM"
    with Image.open(io.BytesIO(stripped.data)) as image:
        assert image.info["Title"] == "Kept"


def webp_chunks(data: bytes) -> dict[bytes, bytes]:
    chunks, pos = {}, 12
    while pos < len(data):
        fourcc, size = struct.unpack_from("<4sI", data, pos)
        chunks[fourcc] = data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return chunks


def test_webp_delivery_loses_location_with_a_consistent_container():
    out = io.BytesIO()
    photo("chelsea").save(out, "WEBP", quality=80, exif=camera_exif(), xmp=FULL_XMP)
    data = out.getvalue()

    stripped = strip_location(data)

    assert stripped.lossless and set(stripped.removed) == {"EXIF GPS position", "XMP location"}
    assert_no_gps(stripped.data)
    assert struct.unpack_from("<I", stripped.data, 4)[0] == len(stripped.data) - 8
    chunks = webp_chunks(stripped.data)
    assert chunks[b"VP8 "] == webp_chunks(data)[b"VP8 "]  # the compressed image, untouched
    assert chunks[b"VP8X"][0] & 0x0C == 0x0C  # EXIF and XMP still announced: both still there
    assert np.array_equal(pixels(stripped.data), pixels(data))
    assert read_embedded_metadata(stripped.data).camera_model == "EOS R5"


def test_webp_chunk_that_cannot_be_parsed_is_removed_and_unannounced():
    out = io.BytesIO()
    photo("chelsea").save(out, "WEBP", quality=80, exif=camera_exif(gps=False), xmp=b"<x:xmpmeta><broken")
    data = out.getvalue()

    stripped = strip_location(data)

    assert stripped.removed == ("unreadable XMP packet",)
    chunks = webp_chunks(stripped.data)
    assert b"XMP " not in chunks and b"EXIF" in chunks
    assert chunks[b"VP8X"][0] & 0x04 == 0 and chunks[b"VP8X"][0] & 0x08
    with Image.open(io.BytesIO(stripped.data)) as image:
        image.load()
        assert image.getexif()[0x0110].strip() == "EOS R5"


# --- hostile input ----------------------------------------------------------------------------


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """Copies of data with random bytes changed, cut or inserted in its first 3000 bytes (headers)."""
    rng = random.Random(seed)
    copies = []
    for _ in range(count):
        copy = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            at, roll = rng.randrange(min(3000, len(copy))), rng.random()
            if roll < 0.6:
                copy[at] = rng.randrange(256)
            elif roll < 0.8:
                del copy[at : at + rng.randint(1, 20)]
            else:
                copy[at:at] = rng.randbytes(rng.randint(1, 8))
        copies.append(bytes(copy))
    return copies


def test_damaged_files_never_crash_and_never_keep_location():
    small = photo("chelsea").resize((64, 48))
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", FULL_XMP.decode(), zip=True)
    png, webp = io.BytesIO(), io.BytesIO()
    small.save(png, "PNG", exif=camera_exif(), pnginfo=info)
    small.save(webp, "WEBP", exif=camera_exif(), xmp=FULL_XMP)
    tagged = with_iptc(jpeg(small, exif=camera_exif(), xmp=FULL_XMP), iptc_dataset(90, "Paris"))

    for seed, original in enumerate((tagged, png.getvalue(), webp.getvalue())):
        for damaged in mutations(original, 150, seed):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF
                read_embedded_metadata(damaged)  # must not raise
                try:
                    stripped = strip_location(damaged)
                except ValueError:
                    continue  # not an image any more: refused, not delivered
                assert read_embedded_metadata(stripped.data).has_location is False
                try:
                    exif = Image.open(io.BytesIO(stripped.data)).getexif()
                except (OSError, SyntaxError):
                    continue  # headers too broken for Pillow; uploads like that are refused anyway
                assert GPS_IFD not in exif
