"""Ids: the one rule for which numbers can name a row, and its adapters for URLs, the API and forms.

Every table's primary key is a BigAutoField (settings.DEFAULT_AUTO_FIELD): 1 to 2**63 - 1 on SQLite and
PostgreSQL alike. A number outside that range names nothing, but handed to the database it fails the
query (OverflowError on SQLite, a DataError on PostgreSQL), which was a 500. So every id that comes with
a request goes through `parse_id` first: in a URL path (the `id` converter, registered by CoreConfig, and
`IdLookupMixin` for API viewsets) an id out of range is a 404 like any unknown id; in a request body or a
form (`IdField`, `IdListField`, `parse_id`) it is a 400 whose message gives the range.
"""

from django.http import Http404
from rest_framework import serializers

MIN_ID = 1
MAX_ID = 2**63 - 1
ID_RANGE = f"Ids are whole numbers from {MIN_ID} to {MAX_ID}."
_MAX_DIGITS = len(str(MAX_ID)) + 2  # a little slack for leading zeros; longer text is never parsed


def parse_id(value) -> int | None:
    """The id that `value` (an int, or its decimal digits) names, or None where it cannot name a row."""
    if isinstance(value, bool):  # JSON true is not the id 1
        return None
    if isinstance(value, str):
        text = value.strip()
        # isascii first: isdigit() alone also accepts digits such as "²" that int() refuses.
        if not (text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS):
            return None
        value = int(text)
    if not isinstance(value, int):
        return None
    return value if MIN_ID <= value <= MAX_ID else None


def shown(value, limit: int = 40) -> str:
    """A rejected value as an error message quotes it: short, whatever the client sent."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def not_an_id(value, noun: str = "an id") -> str:
    return f"“{shown(value)}” is not {noun}. {ID_RANGE}"


class IdConverter:
    """`<id:pk>` in a URL pattern: digits naming a possible row; anything else matches no page (404)."""

    regex = "[0-9]+"

    def to_python(self, value: str) -> int:
        number = parse_id(value)
        if number is None:
            raise ValueError(ID_RANGE)  # Django's resolver takes this as "no match"
        return number

    def to_url(self, value) -> str:
        return str(int(value))


class IdField(serializers.IntegerField):
    """One id in a request body."""

    default_error_messages = {"invalid": ID_RANGE}

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", MIN_ID)
        kwargs.setdefault("max_value", MAX_ID)  # also what the OpenAPI schema advertises
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        number = parse_id(data)
        if number is None:
            raise serializers.ValidationError(not_an_id(data), code="invalid")
        return number


class IdListField(serializers.ListField):
    """Ids in a request body (a JSON list, or a repeated form field); the errors are one flat list of
    messages that quote each bad value, as the batch editor shows them."""

    child = IdField()

    def run_child_validation(self, data):
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)  # before looking at a huge list's items
        bad = [item for item in data if parse_id(item) is None]
        if bad:
            raise serializers.ValidationError([not_an_id(item) for item in bad[:10]], code="invalid")
        return [parse_id(item) for item in data]


class IdLookupMixin:
    """For an API viewset looked up by id: an id out of range is the same 404 as an unknown one,
    checked before it reaches the database (the router's lookup still matches any segment, so that
    every bad id gets the API's JSON 404 rather than the site's HTML page)."""

    def get_object(self):
        lookup = self.lookup_url_kwarg or self.lookup_field
        if parse_id(self.kwargs.get(lookup)) is None:
            raise Http404(f"No such id. {ID_RANGE}")
        return super().get_object()
