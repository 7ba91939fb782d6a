from django.db import transaction
from rest_framework.authtoken.models import Token

from marketplace.accounts.models import CreatorProfile, User


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
