"""Errors that Django answers before the API's views run (no such URL, a request too big to parse, a crash):
under /api/ they are JSON in the API's one error shape (marketplace/core/api_schema.py), like every other API
error, so that a script never has to parse an HTML page; everywhere else they are Django's pages."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.views import exception_handler

API_PREFIX = "/api/"


def _is_api(request) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request, exception, **kwargs):
    if _is_api(request):
        return JsonResponse({"detail": "The request could not be read (too many fields, or malformed)."}, status=400)
    return defaults.bad_request(request, exception, **kwargs)


def permission_denied(request, exception, **kwargs):
    if _is_api(request):
        return JsonResponse({"detail": str(exception) or "You do not have permission to do this."}, status=403)
    return defaults.permission_denied(request, exception, **kwargs)


def page_not_found(request, exception, **kwargs):
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception, **kwargs)


def server_error(request, **kwargs):
    if _is_api(request):
        return JsonResponse({"detail": "Something went wrong on our side; it has been logged."}, status=500)
    return defaults.server_error(request, **kwargs)


def api_exception_handler(exc, context):
    """REST_FRAMEWORK's EXCEPTION_HANDLER: the services' own refusals answered in the API's error shape.

    Services raise Django's PermissionDenied and ValidationError (the pages catch the same ones). DRF would
    answer the first with a generic message and the second not at all (a 500); here a refusal keeps its reason:
    403 {"detail": ...}, and 400 with messages keyed by field ({"non_field_errors": [...]} for the rest)."""
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    return exception_handler(exc, context)
