"""The OpenAPI schema's one error shape, declared on every operation that can answer with it.

Every API error is a JSON object: `detail` says what went wrong with the request as a whole (401, 403, 404,
429 and some 400s), `code` names its kind where a script may want to branch on it, and any other key is a
field of the request (or `non_field_errors`, or an image id for bulk changes) with its messages (a list, or
per item for list and dict fields). drf-spectacular builds the schema from the views; this AutoSchema adds
the error responses that DRF itself can give to every operation, so that no view has to remember them and
a new endpoint gets them too. A view still declares the errors only it knows of (409, 429, a 403 on a read).
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": "An error. `detail`: the reason, for the request as a whole; `code`: its kind, where a "
    "script may branch on it; any other key: a field of the request (or `non_field_errors`, or an image id) "
    "with its messages.",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
    },
    "additionalProperties": {
        "oneOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "description": "Messages per item of a list or dict field, or details."},
        ]
    },
}
DESCRIPTIONS = {
    "400": "Refused: the request is invalid (reasons keyed by field) or the object's state does not allow it.",
    "401": "Not signed in, or the token is not valid.",
    "403": "Signed in, but not allowed to do this (or, with session authentication, no CSRF token).",
    "404": "No such object among those you may see (or no such page of results).",
}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class AutoSchema(SpectacularAutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            responses.setdefault(code, {"description": DESCRIPTIONS[code]})
        for code, response in responses.items():
            if code.startswith("4") and "content" not in response:
                response["content"] = {"application/json": {"schema": self._error_ref()}}
        return responses

    def _error_codes(self) -> list[str]:
        authenticated = bool(self.view.get_authenticators())
        codes = []
        if self.method in UNSAFE_METHODS:
            codes.append("400")  # an invalid body, or a change the object's state does not allow
        if authenticated:
            # A bad token is refused even where no sign-in is needed; session writes also need a CSRF token.
            codes.append("401")
            if self.method in UNSAFE_METHODS:
                codes.append("403")
        if "{" in self.path or (self.method == "GET" and self._is_list_view() and self._get_paginator()):
            codes.append("404")  # a path's object you may not see, or a page past the last one
        return codes

    def _error_ref(self) -> dict:
        component = ResolvedComponent(
            name=ERROR_COMPONENT, type=ResolvedComponent.SCHEMA, object=ERROR_COMPONENT, schema=ERROR_SCHEMA
        )
        self.registry.register_on_missing(component)
        return component.ref
