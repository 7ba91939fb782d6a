import re
import time
from unittest import mock

import pytest
from django.core import mail, signing
from django.test import Client
from rest_framework.test import APIClient

from marketplace.accounts import services
from marketplace.accounts.models import CreatorProfile, User

PASSWORD = "correct horse battery"
DORAS_PASSWORD = "a long unusual passphrase"


def signup(client, **overrides):
    data = {"username": "dora", "email": "Dora@Example.com", "display_name": "Dora Lens", "is_creator": "on"}
    data.update(overrides)
    return client.post("/accounts/signup/", data)


def confirmation_link(message) -> str:
    return re.search(r"https?://[^/\s]+(/accounts/signup/confirm/\S+/)", message.body).group(1)


def confirm(client, link, password=DORAS_PASSWORD, again=None):
    """Press "Create my account" on the mailed link's page with the password chosen there."""
    return client.post(link, {"password1": password, "password2": password if again is None else again})


def signup_and_confirm(client, **overrides):
    assert signup(client, **overrides)["Location"] == "/accounts/signup/sent/"
    return confirm(client, confirmation_link(mail.outbox[-1]))


def test_signing_up_as_a_creator_confirms_the_address_then_logs_in_and_makes_a_profile(client, db):
    response = signup(client)
    assert response.status_code == 302 and response["Location"] == "/accounts/signup/sent/"
    assert "Check your email" in client.get(response["Location"]).content.decode()
    assert not User.objects.filter(username="dora").exists()  # nothing is made before the address is confirmed
    (message,) = mail.outbox
    assert message.to == ["dora@example.com"] and "Confirm your" in message.subject
    assert "choose your password" in message.body
    link = confirmation_link(message)
    page = client.get(link).content.decode()  # opening the link (a mail scanner does) changes nothing
    assert "Create my account" in page and "dora" in page and not User.objects.filter(username="dora").exists()
    assert 'name="password1"' in page and 'name="password2"' in page  # the password is chosen here
    response = confirm(client, link)
    assert response.status_code == 302 and response["Location"] == "/upload/"
    user = User.objects.get(username="dora")
    assert user.email == "dora@example.com"
    assert user.is_creator and not user.is_buyer
    assert user.creator_profile.display_name == "Dora Lens"
    assert client.get("/upload/").status_code == 200
    client.post("/accounts/logout/")
    assert log_in(client, "dora", DORAS_PASSWORD) == 302


def test_a_stranger_who_signs_up_with_someone_elses_address_cannot_know_the_accounts_password(db):
    stranger, owner = Client(), Client()
    # The stranger fills in the sign-up form with Dora's address, and sends along a password of their own choosing.
    stranger.post(
        "/accounts/signup/",
        {"username": "dora", "email": "dora@example.com", "is_creator": "on",
         "password1": "the strangers passphrase", "password2": "the strangers passphrase"},
    )  # fmt: skip
    # Dora reads the mail, opens the link and creates the account: with the password she chooses on that page.
    assert confirm(owner, confirmation_link(mail.outbox[0]), "doras own passphrase")["Location"] == "/upload/"
    refused = stranger.post("/accounts/login/", {"username": "dora", "password": "the strangers passphrase"})
    assert refused.status_code == 200 and "Please enter a correct username and password" in refused.content.decode()
    assert stranger.get("/accounts/me/").status_code == 302
    token = APIClient().post("/api/auth/token/", {"username": "dora", "password": "the strangers passphrase"})
    assert token.status_code == 400
    owner.post("/accounts/logout/")
    assert log_in(owner, "dora", "doras own passphrase") == 302


def test_pressing_create_my_account_without_choosing_a_password_makes_nothing(client, db):
    signup(client)
    link = confirmation_link(mail.outbox[0])
    response = client.post(link)
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not User.objects.exists()
    assert confirm(client, link).status_code == 302  # the link still works once a password is chosen


@pytest.mark.parametrize(
    "password, again, message",
    [
        (DORAS_PASSWORD, "something else entirely", "The two passwords differ."),
        ("12345678", None, "This password is too common."),
        ("short", None, "This password is too short."),
        ("dora@example.com", None, "The password is too similar to the"),
    ],
)
def test_a_bad_password_on_the_confirmation_page_explains_what_to_fix(client, db, password, again, message):
    signup(client)
    link = confirmation_link(mail.outbox[0])
    response = confirm(client, link, password, again)
    assert response.status_code == 200 and message in response.content.decode()
    assert "Create my account" in response.content.decode()  # the same page, to try again
    assert not User.objects.exists()
    assert confirm(client, link).status_code == 302


def test_a_confirmation_link_works_once(client, db):
    signup(client)
    link = confirmation_link(mail.outbox[0])
    confirm(client, link)
    client.post("/accounts/logout/")
    again = confirm(client, link, "another long passphrase")
    assert again.status_code == 410 and "This link no longer works" in again.content.decode()
    assert client.get(link).status_code == 410
    assert confirm(client, "/accounts/signup/confirm/made-up-token/").status_code == 410
    assert User.objects.filter(username="dora").count() == 1
    assert log_in(client, "dora", "another long passphrase") == 200  # the second press changed nothing


def test_a_confirmation_link_expires(client, db, settings):
    signup(client)
    link = confirmation_link(mail.outbox[0])
    assert client.get(link).status_code == 200
    with mock.patch("django.core.signing.time") as clock:  # 4 days later, for the link's signature only
        clock.time.return_value = time.time() + 4 * 24 * 3600
        page = client.get(link)
        response = confirm(client, link)
    assert (
        page.status_code == 410
        and "it expired" in page.content.decode()
        and 'name="password1"' not in page.content.decode()
    )
    assert response.status_code == 410 and "expired" in response.content.decode()
    assert not User.objects.filter(username="dora").exists()


def test_signing_up_as_both_creator_and_buyer(client, db):
    signup_and_confirm(client, is_buyer="on")
    user = User.objects.get(username="dora")
    assert user.is_creator and user.is_buyer


def test_signing_up_as_a_buyer_has_no_creator_profile(client, db):
    assert signup_and_confirm(client, is_creator="", is_buyer="on")["Location"] == "/"
    assert not CreatorProfile.objects.filter(user__username="dora").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"is_creator": ""}, "Choose at least one: creator, buyer, or both."),
        ({"email": "not-an-email"}, "Enter a valid email address."),
        ({"username": "bad name!"}, "Use letters, digits and @ . + - _ only."),
    ],
)
def test_bad_signups_explain_what_to_fix(client, db, overrides, message):
    response = signup(client, **overrides)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.filter(username="dora").exists()
    assert not mail.outbox


def test_a_username_cannot_be_taken_twice(client, alice):
    response = signup(client, username="Alice", email="someone.else@example.com")
    assert response.status_code == 200 and "That username is taken." in response.content.decode()
    assert not mail.outbox


def test_signing_up_with_a_registered_email_looks_the_same_and_mails_its_owner(client, alice):
    new = signup(client, username="dora", email="dora@example.com")
    taken = signup(client, username="dora2", email="ALICE@example.com")
    assert (taken.status_code, taken["Location"]) == (new.status_code, new["Location"])
    assert new["Location"] == "/accounts/signup/sent/"
    assert taken.content == new.content and taken.cookies.keys() == new.cookies.keys()
    assert [m.to for m in mail.outbox] == [["dora@example.com"], ["alice@example.com"]]
    owner = mail.outbox[1]
    assert "tried to sign up" in owner.subject and "already has an account: alice" in owner.body
    assert "/accounts/login/" in owner.body and "/accounts/password-reset/" in owner.body
    assert "/accounts/signup/confirm/" not in owner.body  # no second account can be made with the address
    assert not User.objects.filter(username="dora2").exists()


def test_an_address_that_got_an_account_meanwhile_cannot_make_a_second(client, db):
    signup(client)
    signup(client, username="dora-again")
    first, second = (confirmation_link(m) for m in mail.outbox)
    assert confirm(client, second).status_code == 302
    client.post("/accounts/logout/")
    refused = confirm(client, first)  # the address has an account now: its other links are void
    assert refused.status_code == 410 and "no longer works" in refused.content.decode()
    assert list(User.objects.filter(email="dora@example.com").values_list("username", flat=True)) == ["dora-again"]


def test_a_username_taken_meanwhile_makes_no_account(client, db):
    signup(client)
    link = confirmation_link(mail.outbox[0])
    services.register_user(
        username="Dora", email="another.dora@example.com", password=PASSWORD, is_creator=False, is_buyer=True
    )
    refused = confirm(client, link)
    assert refused.status_code == 410 and "was taken meanwhile" in refused.content.decode()
    assert not User.objects.filter(email="dora@example.com").exists()


def test_a_link_not_signed_for_sign_ups_does_not_work(client, db):
    signup(client)
    token = confirmation_link(mail.outbox[0]).rstrip("/").rpartition("/")[2]
    data = signing.loads(token, salt="marketplace.accounts.signup")
    for forged in (signing.dumps(data), signing.dumps({**data, "username": "mallory"}, key="not our secret key")):
        assert client.get(f"/accounts/signup/confirm/{forged}/").status_code == 410
        assert confirm(client, f"/accounts/signup/confirm/{forged}/").status_code == 410
    assert not User.objects.exists()


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
    locked = client.post("/accounts/login/", {"username": "Alice ", "password": PASSWORD})
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


def log_in(client, username="alice", password=PASSWORD, address="127.0.0.1", forwarded=None):
    extra = {"REMOTE_ADDR": address, **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})}
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra).status_code


def test_one_account_is_locked_against_guesses_from_many_addresses_but_not_at_its_owners(client, alice, bob, settings):
    settings.LOGIN_MAX_FAILURES = 2  # per account and address; per account over all addresses: 4 times as many
    assert log_in(client, address="198.51.100.1") == 302  # alice's home
    client.post("/accounts/logout/")
    for n in range(8):  # a botnet: one guess from each of 8 addresses
        assert log_in(client, password="wrong", address=f"203.0.113.{n}") == 200
    assert log_in(client, address="203.0.113.200") == 429  # the account is locked for strangers, right password or not
    assert log_in(client, address="198.51.100.1") == 302  # but not where its owner logged in before
    client.post("/accounts/logout/")
    assert log_in(client, "bob", address="203.0.113.200") == 302  # other accounts are not locked


def test_behind_a_configured_proxy_each_client_is_counted_by_its_own_address(client, alice, bob, settings):
    settings.LOGIN_MAX_FAILURES = 2
    settings.TRUSTED_PROXY_COUNT = 1  # every request arrives from the load balancer, 10.0.0.1
    attacker = {"address": "10.0.0.1", "forwarded": "203.0.113.9"}
    for n in range(8):  # sprays 8 accounts: its address is locked...
        assert log_in(client, f"user{n}", "wrong", **attacker) == 200
    assert log_in(client, "bob", **attacker) == 429
    # ...even when it makes up an X-Forwarded-For entry of its own (the proxy appends the real address after it)
    assert log_in(client, "bob", address="10.0.0.1", forwarded="198.51.100.7, 203.0.113.9") == 429
    for _ in range(2):
        log_in(client, "alice", "wrong", address="10.0.0.1", forwarded="203.0.113.10")
    # ...while other people behind the same proxy log in: to another account, and to the account under attack
    assert log_in(client, "bob", address="10.0.0.1", forwarded="198.51.100.7") == 302
    client.post("/accounts/logout/")
    assert log_in(client, "alice", address="10.0.0.1", forwarded="198.51.100.8") == 302


def test_x_forwarded_for_is_ignored_when_no_proxy_is_configured(client, alice, settings):
    settings.LOGIN_MAX_FAILURES = 2
    for n in range(8):  # a different made-up X-Forwarded-For each time cannot escape the address's limit
        assert log_in(client, f"user{n}", "wrong", address="203.0.113.9", forwarded=f"198.51.100.{n}") == 200
    assert log_in(client, "alice", address="203.0.113.9", forwarded="198.51.100.99") == 429


def test_the_api_token_endpoint_counts_failures_per_account_over_all_addresses(alice, bob, settings):
    settings.LOGIN_MAX_FAILURES = 2
    api = APIClient()
    for n in range(8):
        wrong = api.post("/api/auth/token/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR=f"203.0.113.{n}")
        assert wrong.status_code == 400
    locked = api.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="203.0.113.99")
    assert locked.status_code == 429 and "Too many failed log-in attempts" in locked.json()["detail"]
    assert api.post("/api/auth/token/", {"username": "bob", "password": PASSWORD}).status_code == 200


def test_resetting_the_password_lifts_the_accounts_lock(client, alice, settings):
    settings.LOGIN_MAX_FAILURES = 2
    for n in range(8):
        log_in(client, password="wrong", address=f"203.0.113.{n}")
    assert log_in(client) == 429
    client.post("/accounts/password-reset/", {"email": "alice@example.com"})
    link = re.search(r"http://testserver(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    new_password = {"new_password1": "brand new passphrase", "new_password2": "brand new passphrase"}
    client.post(form.redirect_chain[-1][0], new_password)
    assert log_in(client, password="brand new passphrase") == 302


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
    assert log_in(client, password="brand new passphrase") == 302
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
