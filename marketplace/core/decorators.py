"""Access rules for pages, shared by every app."""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied


def staff_required(view):
    """Staff pages: a visitor who is not logged in is sent to log in; a logged-in user who is not staff gets
    403. (Django's staff_member_required sends them to the admin log-in instead, as if they were logged out.)"""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (request.user.is_active and request.user.is_staff):
            raise PermissionDenied("This page is for staff.")
        return view(request, *args, **kwargs)

    return wrapper
