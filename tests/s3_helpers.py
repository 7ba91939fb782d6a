"""A real S3 API over HTTP for the storage tests: moto's server in a thread, one bucket per test.

A test module loads the fixtures with `pytest_plugins = ["tests.s3_helpers"]`."""

import hashlib
import logging
import uuid
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer

ACCESS_KEY = "AKIAMARKETPLACETEST"
SECRET_KEY = "marketplace-test-secret"
REGION = "us-east-1"


@dataclass
class Bucket:
    """The test's bucket, seen through boto3 directly (not through Django's storage)."""

    name: str
    endpoint_url: str
    access_key: str
    client: object

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(entry["Key"] for page in pages for entry in page.get("Contents", ()))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.read(key)).hexdigest()

    def is_private(self, key: str) -> bool:
        grants = self.client.get_object_acl(Bucket=self.name, Key=key)["Grants"]
        return not any("AllUsers" in grant["Grantee"].get("URI", "") for grant in grants)


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 (and every other API) on a free port of 127.0.0.1, for the whole test run."""
    requests_log = logging.getLogger("werkzeug")  # the server's line per request drowns a failure's report
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    requests_log.setLevel(level)


def s3_storage_settings(bucket: str, endpoint_url: str) -> dict:
    """STORAGES["default"] as settings.py makes it when MEDIA_S3_BUCKET is set, pointed at moto."""
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "region_name": REGION,
            "default_acl": "private",
            "querystring_auth": True,
            "signature_version": "s3v4",
            "file_overwrite": True,
        },
    }


@pytest.fixture
def s3_media(media_root, settings, moto_server) -> Bucket:
    """Media on S3: a fresh bucket on the moto server, made Django's default storage (after conftest's
    media_root put it on local disk). Nothing may be written under media_root meanwhile."""
    from django.core.files.storage import default_storage
    from storages.backends.s3 import S3Storage

    name = f"media-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    client.create_bucket(Bucket=name)
    settings.STORAGES = {**settings.STORAGES, "default": s3_storage_settings(name, moto_server)}
    # Django's setting_changed receiver dropped the cached storages: default_storage is the bucket now.
    assert isinstance(default_storage, S3Storage) and default_storage.bucket_name == name
    yield Bucket(name=name, endpoint_url=moto_server, access_key=ACCESS_KEY, client=client)
    assert not any(path.is_file() for path in media_root.rglob("*")), "a file went to local disk, not S3"
