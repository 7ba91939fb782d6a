from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from marketplace.accounts import selectors, services
from marketplace.accounts.forms import AccountForm, RateLimitedAuthenticationForm, SignupForm, SignupPasswordForm


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = RateLimitedAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.rate_limited:
            response.status_code = 429
        return response


def signup(request):
    if request.user.is_authenticated:
        return redirect("core:home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        # The same answer whether or not the address has an account: only its owner's inbox tells.
        services.request_signup(
            username=data["username"],
            email=data["email"],
            is_creator=data["is_creator"],
            is_buyer=data["is_buyer"],
            display_name=data["display_name"],
        )
        return redirect("accounts:signup-sent")
    return render(request, "accounts/signup.html", {"form": form})


def signup_sent(request):
    return render(request, "accounts/signup_sent.html", {"hours": settings.SIGNUP_CONFIRM_SECONDS // 3600})


def signup_confirm(request, token):
    """The mailed link: a page where the new account's password is chosen (forms.SignupPasswordForm says why
    there). A GET changes nothing, so mail scanners that open links make no account; the POST makes it and logs in."""
    pending = selectors.pending_signup(token)
    if pending is None:
        return render(request, "accounts/signup_confirm.html", {"error": services.SIGNUP_LINK_GONE}, status=410)
    data = request.POST if request.method == "POST" else None  # an empty POST is a press too: it must show errors
    form = SignupPasswordForm(data, username=pending.username, email=pending.email)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.confirm_signup(pending, password=form.cleaned_data["password1"])
        except services.SignupLinkError as error:
            return render(request, "accounts/signup_confirm.html", {"error": str(error)}, status=410)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome! Your account is ready.")
        return redirect("catalog:upload" if user.is_creator else "core:home")
    return render(request, "accounts/signup_confirm.html", {"pending": pending, "form": form})


@login_required
def account(request):
    user = request.user
    profile = getattr(user, "creator_profile", None)
    initial = {
        "is_creator": user.is_creator,
        "is_buyer": user.is_buyer,
        "display_name": profile.display_name if profile else "",
        "bio": profile.bio if profile else "",
        "payout_email": profile.payout_email if profile else "",
    }
    form = AccountForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        services.update_account(user, **form.cleaned_data)
        messages.success(request, "Your account is saved.")
        return redirect("accounts:account")
    token = Token.objects.filter(user=user).first()
    return render(request, "accounts/account.html", {"form": form, "token": token})


@login_required
@require_POST
def regenerate_token(request):
    services.regenerate_api_token(request.user)
    messages.success(request, "A new API token was made; the old one no longer works.")
    return redirect("accounts:account")


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset_form.html"
    email_template_name = "accounts/password_reset_email.txt"
    subject_template_name = "accounts/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")

    def form_valid(self, form):
        response = super().form_valid(form)
        services.clear_login_failures(form.user)
        return response
