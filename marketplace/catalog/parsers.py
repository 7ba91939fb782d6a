"""The API's multipart parser for uploads: the file's name as the client sent it, cleaned by our rules.

Django's multipart parser cleans names its own way before any view sees them: it decodes HTML entities
("Tom &amp; Jerry.jpg" became "Tom & Jerry.jpg"), cuts at every slash ("<b>x</b>.jpg" became "b>.jpg"
only because of the "/" in "</b>"), drops non-printable characters (so "a\tb" became "ab"), cuts names
longer than 255 characters silently, and answers a name near 1,000 bytes with its own error text ("Request
max total header size exceeded": a part's headers may not pass 1,024 bytes). Here `clean_filename` is
the one rule, and an over-long name is a 400 that says the limit, in the upload's error shape.
"""

from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from marketplace.catalog.validation import UploadRejected, clean_filename, filename_too_long


class _NamesKeptMultiPartParser(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name):
        return clean_filename(file_name)  # never "", ".." or a path: what Django's UploadedFile requires


class UploadParser(parsers.MultiPartParser):
    """DRF's MultiPartParser (same media type, same result) with our file-name rule."""

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = parser_context["request"]
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        encoding = parsers.get_encoding(parser_context)
        try:
            data, files = _NamesKeptMultiPartParser(meta, stream, request.upload_handlers, encoding).parse()
        except UploadRejected as rejected:
            raise _rejection(rejected) from None
        except MultiPartParserError as error:
            if "header size" in str(error):
                # Only a part's headers can pass that size, and in an upload only the file name grows.
                raise _rejection(filename_too_long()) from None
            raise ParseError(f"Multipart form parse error - {error}") from None
        return parsers.DataAndFiles(data, files)


def _rejection(rejected: UploadRejected) -> ParseError:
    # The shape of every other refused upload: {"code", "detail", "file": [...]}.
    return ParseError({"code": rejected.code, "detail": rejected.message, "file": [rejected.message]})
