from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from marketplace.accounts import services
from marketplace.accounts.forms import AccountForm, RateLimitedAuthenticationForm, SignupForm


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
        user = services.register_user(
            username=data["username"],
            email=data["email"],
            password=data["password1"],
            is_creator=data["is_creator"],
            is_buyer=data["is_buyer"],
            display_name=data["display_name"],
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome! Your account is ready.")
        return redirect("catalog:upload" if user.is_creator else "core:home")
    return render(request, "accounts/signup.html", {"form": form})


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
