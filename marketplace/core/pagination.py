"""The API's page numbers: a positive integer, exactly as the OpenAPI schema says, or 404 "Invalid page."."""

import re

from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


class StrictPageNumberPagination(PageNumberPagination):
    # DRF reads an empty `page` as the first page and "last" as the last one: values the schema (an integer)
    # does not allow, so a script that sends one by mistake would silently get another page than it meant.
    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param)
        if raw is None:
            return 1
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise NotFound(self.invalid_page_message)
        return int(raw)
