import os
import tempfile

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage
from django.http import HttpResponseRedirect
from django.utils.http import content_disposition_header


class AtomicFileSystemStorage(FileSystemStorage):
    """Local storage whose files appear whole or not at all.

    Django's FileSystemStorage streams into the final path, so a crash mid-write
    leaves a truncated file that looks real. Here the bytes go to a hidden temporary
    file in the same folder and are linked into place only once fully written
    (link: never clobbers; replace when overwriting is allowed).
    """

    def __init__(self, *args, allow_overwrite=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.overwrite = allow_overwrite

    def _save(self, name, content):
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as tmp:
                if hasattr(content, "seek"):
                    content.seek(0)
                for chunk in content.chunks():
                    tmp.write(chunk if isinstance(chunk, bytes) else chunk.encode())
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_path, self.file_permissions_mode or 0o640)
            while True:
                try:
                    if self.overwrite:
                        os.replace(tmp_path, full_path)
                    else:
                        os.link(tmp_path, full_path)
                    break
                except FileExistsError:
                    name = self.get_available_name(name)
                    full_path = self.path(name)
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
        return os.path.relpath(full_path, self.location).replace("\\", "/")

    def get_available_name(self, name, max_length=None):
        if self.overwrite:
            return name
        return super().get_available_name(name, max_length)


def local_path_or_none(storage: Storage, name: str) -> str | None:
    """The file's path on this machine's disk, or None when storage keeps it elsewhere (S3: no path())."""
    try:
        return storage.path(name)
    except NotImplementedError:
        return None


def presigned_url(storage: Storage, name: str, *, filename: str, seconds: int) -> str | None:
    """A URL that downloads the file straight from object storage as an attachment named `filename`, valid
    for `seconds`; None where storage has no such URL (local disk, or S3 without signed URLs), and the
    caller streams the file through Django instead. Check permissions before asking for one."""
    if local_path_or_none(storage, name) is not None:
        return None
    from storages.backends.s3 import S3Storage  # here: boto3 loads only where media are on S3

    if not isinstance(storage, S3Storage) or not storage.querystring_auth or storage.custom_domain:
        return None  # unsigned or CDN URLs would be public, or ignore the attachment name
    return storage.url(
        name,
        parameters={
            "ResponseContentDisposition": content_disposition_header(True, filename),
            "ResponseCacheControl": "private, no-store",
        },
        expire=seconds,
    )


def download_redirect(storage: Storage, name: str, *, filename: str) -> HttpResponseRedirect | None:
    """Where storage is S3: a redirect to a signed URL valid DOWNLOAD_PRESIGNED_SECONDS that downloads the
    file as an attachment named `filename`; None on local disk (stream the file through Django instead).
    FileNotFoundError if the object is missing. Check permissions before calling."""
    url = presigned_url(storage, name, filename=filename, seconds=settings.DOWNLOAD_PRESIGNED_SECONDS)
    if url is None:
        return None
    if not storage.exists(name):
        raise FileNotFoundError(name)
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = "private, no-store"  # the redirect lives no longer than its signature
    return response
