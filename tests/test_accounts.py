import re

import pytest
from django.core import mail
from rest_framework.test import APIClient

from marketplace.accounts.models import CreatorProfile, User

PASSWORD = "correct horse battery"


def signup(client, **overrides):
    data = {
        "username": "dora",
        "email": "Dora@Example.com",
        "display_name": "Dora Lens",
        "password1": "a long unusual passphrase",
        "password2": "a long unusual passphrase",
        "is_creator": "on",
    }
    data.update(overrides)
    return client.post("/accounts/signup/", data)


def test_signing_up_as_a_creator_logs_in_and_makes_a_profile(client, db):
    response = signup(client)
    assert response.status_code == 302 and response["Location"] == "/upload/"
    user = User.objects.get(username="dora")
    assert user.email == "dora@example.com"
    assert user.is_creator and not user.is_buyer
    assert user.creator_profile.display_name == "Dora Lens"
    assert client.get("/upload/").status_code == 200


def test_signing_up_as_both_creator_and_buyer(client, db):
    signup(client, is_buyer="on")
    user = User.objects.get(username="dora")
    assert user.is_creator and user.is_buyer


def test_signing_up_as_a_buyer_has_no_creator_profile(client, db):
    signup(client, is_creator="", is_buyer="on")
    assert not CreatorProfile.objects.filter(user__username="dora").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"is_creator": ""}, "Choose at least one: creator, buyer, or both."),
        ({"password2": "something else entirely"}, "The two passwords differ."),
        ({"password1": "12345678", "password2": "12345678"}, "This password is too common."),
        ({"email": "not-an-email"}, "Enter a valid email address."),
        ({"username": "bad name!"}, "Use letters, digits and @ . + - _ only."),
    ],
)
def test_bad_signups_explain_what_to_fix(client, db, overrides, message):
    response = signup(client, **overrides)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.filter(username="dora").exists()


def test_an_email_or_username_cannot_be_taken_twice(client, alice):
    response = signup(client, username="Alice", email="ALICE@example.com")
    page = response.content.decode()
    assert "That username is taken." in page
    assert "An account with that email exists." in page


def test_log_in_and_log_out(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/accounts/me/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405  # log-out is a POST: no cross-site log-out links
    client.post("/accounts/logout/")
    assert client.get("/accounts/me/").status_code == 302


def test_login_is_rate_limited_even_for_the_right_password(client, alice, settings):
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    locked = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429
    assert "Too many failed log-in attempts" in locked.content.decode()
    assert client.get("/accounts/me/").status_code == 302


def test_one_address_cannot_spray_many_accounts(client, alice, settings):
    settings.LOGIN_MAX_FAILURES = 2
    for n in range(8):  # 2 per account, 8 from one address: the address limit
        client.post("/accounts/login/", {"username": f"user{n}", "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 429


def test_a_successful_login_clears_the_failures(client, alice, settings):
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(2):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(2):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 302


def test_the_api_token_endpoint_is_rate_limited_too(alice, settings):
    settings.LOGIN_MAX_FAILURES = 2
    api = APIClient()
    for _ in range(2):
        assert api.post("/api/auth/token/", {"username": "alice", "password": "wrong"}).status_code == 400
    assert api.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}).status_code == 429


def test_password_reset_by_email(client, alice):
    response = client.post("/accounts/password-reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert "Choose a new password" in form.content.decode()
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": "brand new passphrase", "new_password2": "brand new passphrase"}
    )
    assert done.status_code == 302
    assert client.login(username="alice", password="brand new passphrase")
    again = client.get(link, follow=True)
    assert "This link no longer works" in again.content.decode()


def test_password_reset_does_not_reveal_whether_an_email_exists(client, db):
    response = client.post("/accounts/password-reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and len(mail.outbox) == 0


def test_creator_profile_editing(client, alice):
    client.force_login(alice)
    response = client.post(
        "/accounts/me/",
        {"is_creator": "on", "is_buyer": "on", "display_name": "Alice P.", "bio": "Street photos.",
         "payout_email": "pay@alice.test"},
    )  # fmt: skip
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.is_buyer
    assert alice.creator_profile.display_name == "Alice P."
    assert alice.creator_profile.payout_email == "pay@alice.test"
    refused = client.post("/accounts/me/", {"payout_email": "nope"})
    assert "Choose at least one" in refused.content.decode()
    assert "Enter a valid email address." in refused.content.decode()


def test_a_buyer_can_become_a_creator(client, carol):
    client.force_login(carol)
    assert client.get("/upload/").status_code == 403
    client.post("/accounts/me/", {"is_creator": "on", "is_buyer": "on", "display_name": "Carol"})
    assert client.get("/upload/").status_code == 200
    assert CreatorProfile.objects.get(user=carol).display_name == "Carol"


def test_api_token_can_be_replaced_from_the_account_page(client, alice):
    client.force_login(alice)
    client.post("/accounts/me/token/")
    first = alice.auth_token.key
    client.post("/accounts/me/token/")
    alice.refresh_from_db()
    assert alice.auth_token.key != first
    assert alice.auth_token.key in client.get("/accounts/me/").content.decode()
