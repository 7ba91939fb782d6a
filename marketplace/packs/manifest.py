"""The manifest of a pack version: the canonical list of what a buyer licenses, identified by its SHA-256.

Anyone can re-hash a downloaded manifest and compare it with the one on the pack page and the licence
certificate, so its bytes must not depend on dict order or whitespace: `canonical_bytes` fixes both.
"""

import hashlib
import json
from datetime import UTC, datetime

FORMAT = "creator-dataset-marketplace/pack-manifest/1"


def canonical_bytes(manifest: dict) -> bytes:
    """Sorted keys, no spaces, UTF-8 kept as is: the same manifest always gives the same bytes."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_sha256(manifest: dict) -> str:
    return hashlib.sha256(canonical_bytes(manifest)).hexdigest()


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC to the second, with a Z: how times are written in manifests."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def manifest_item(item) -> dict:
    """One PackItem (saved or about to be) as the manifest lists it."""
    return {
        "key": item.key,
        "file": f"{item.key}.{item.extension}",
        "asset_id": item.asset_id,
        "creator": item.creator.username,
        "creator_id": item.creator_id,
        "licence": item.licence,
        "title": item.title,
        "caption": item.training_caption,
        "sha256": item.sha256,
        "bytes": item.byte_size,
        "width": item.width,
        "height": item.height,
        "format": item.file_format,
    }


def build_manifest(
    *,
    slug: str,
    title: str,
    number: int,
    use: str,
    published_at: datetime,
    price_cents: int,
    currency: str,
    licence_terms: dict,
    datasheet: dict,
    items: list,
) -> dict:
    return {
        "format": FORMAT,
        "pack": {"slug": slug, "title": title, "version": number, "use": use},
        "published_at": iso_utc(published_at),
        "price": {"amount_cents": price_cents, "currency": currency},
        "licence_terms": licence_terms,
        "datasheet_sha256": hashlib.sha256(canonical_bytes(datasheet)).hexdigest(),
        "items": [manifest_item(item) for item in items],
    }
