import os
import tempfile

from django.core.files.storage import FileSystemStorage


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
