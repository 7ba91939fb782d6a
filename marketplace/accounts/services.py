from axes.utils import reset as reset_login_failures
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from rest_framework.authtoken.models import Token

from marketplace.accounts import lockout
from marketplace.accounts.models import CreatorProfile, PendingSignup, User


class SignupLinkError(Exception):
    """A confirmation link that cannot make an account; the message says what to do."""


SIGNUP_LINK_GONE = "This link no longer works: it was used already or it expired. Log in, or sign up again."


@transaction.atomic
def register_user(
    *, username: str, email: str, password: str, is_creator: bool, is_buyer: bool, display_name: str = ""
) -> User:
    user = User.objects.create_user(
        username=username,
        email=User.objects.normalize_email(email).lower(),
        password=password,
        is_creator=is_creator,
        is_buyer=is_buyer,
    )
    if is_creator:
        CreatorProfile.objects.create(user=user, display_name=display_name or username)
    return user


@transaction.atomic
def update_account(
    user: User, *, is_creator: bool, is_buyer: bool, display_name: str = "", bio: str = "", payout_email: str = ""
) -> User:
    user.is_creator = is_creator
    user.is_buyer = is_buyer
    user.save(update_fields=["is_creator", "is_buyer"])
    if is_creator or hasattr(user, "creator_profile"):
        profile, _ = CreatorProfile.objects.get_or_create(user=user, defaults={"display_name": user.username})
        profile.display_name = display_name or profile.display_name or user.username
        profile.bio = bio
        profile.payout_email = payout_email
        profile.save()
    return user


def regenerate_api_token(user: User) -> Token:
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user)


def request_signup(*, username: str, email: str, is_creator: bool, is_buyer: bool, display_name: str = "") -> None:
    """Start a sign-up: mail its address a link where the account's password is chosen and the account made, or,
    when the address has an account, mail that account's owner instead. The caller answers the same in both cases,
    and both take about as long (a query and an email each), so the sign-up page does not tell who has an account."""
    email = User.objects.normalize_email(email).lower()
    existing = User.objects.filter(email__iexact=email).first()
    if existing is not None:
        _send(
            email,
            f"Someone tried to sign up to {settings.SITE_NAME} with your address",
            f"Someone (perhaps you) tried to create an account on {settings.SITE_NAME} with this email address, "
            f"which already has an account: {existing.get_username()}.\n\n"
            f"Log in: {settings.SITE_URL}{reverse('accounts:login')}\n"
            f"Forgot your password? Reset it: {settings.SITE_URL}{reverse('accounts:password_reset')}\n\n"
            "If it was not you, ignore this email: nothing was changed.\n",
        )
        return
    pending = PendingSignup(
        username=username, email=email, is_creator=is_creator, is_buyer=is_buyer, display_name=display_name
    )
    hours = settings.SIGNUP_CONFIRM_SECONDS // 3600
    _send(
        email,
        f"Confirm your {settings.SITE_NAME} account",
        f"Someone (perhaps you) signed up to {settings.SITE_NAME} as {username} with this email address.\n\n"
        f"To confirm it, open this link, choose your password and create the account (the link works for "
        f"{hours} hours):\n"
        f"{settings.SITE_URL}{reverse('accounts:signup-confirm', args=[pending.token()])}\n\n"
        "If it was not you, ignore this email: no account is made.\n",
    )


def _send(address: str, subject: str, body: str) -> None:
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address])


def confirm_signup(pending: PendingSignup, *, password: str) -> User:
    """Make the account of a pending sign-up (selectors.pending_signup: from a working link), with the password
    chosen by whoever followed the link (the one who reads the address's mail, not necessarily who filled in the
    sign-up form). Raises SignupLinkError when it cannot."""
    if User.objects.filter(username__iexact=pending.username).exists():
        raise SignupLinkError(f"The username {pending.username} was taken meanwhile: sign up again with another.")
    try:
        return register_user(
            username=pending.username,
            email=pending.email,
            password=password,
            is_creator=pending.is_creator,
            is_buyer=pending.is_buyer,
            display_name=pending.display_name,
        )
    except IntegrityError:  # the same link pressed twice at once: the other press made the account
        raise SignupLinkError(SIGNUP_LINK_GONE) from None


def clear_login_failures(user: User) -> None:
    """After a password reset the account's owner may log in again at once, from anywhere."""
    reset_login_failures(username=lockout.normalised_username(None, {"username": user.get_username()}))
