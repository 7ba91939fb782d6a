"""Who may see and do what with an asset: owner, another creator, a buyer, staff, anonymous."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from marketplace.catalog import services
from marketplace.catalog.models import Asset
from tests.conftest import photo_bytes


@pytest.fixture
def asset(alice, django_capture_on_commit_callbacks) -> Asset:
    with django_capture_on_commit_callbacks(execute=True):
        created = services.upload_asset(owner=alice, uploaded_file=SimpleUploadedFile("a.jpg", photo_bytes("rocket")))
    created.refresh_from_db()
    assert created.status == Asset.Status.READY
    return created


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


PAGES = ["/assets/{pk}/", "/assets/{pk}/edit/", "/assets/{pk}/withdraw/"]
FILES = ["thumbnail", "preview", "delivery", "original"]


@pytest.mark.parametrize("path", PAGES + [f"/assets/{{pk}}/files/{kind}/" for kind in FILES])
def test_anonymous_visitors_are_sent_to_log_in(asset, path):
    response = client_for(None).get(path.format(pk=asset.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("who", ["bob", "carol"])
@pytest.mark.parametrize("path", PAGES + [f"/assets/{{pk}}/files/{kind}/" for kind in FILES])
def test_other_users_cannot_see_an_asset_or_its_files(asset, path, who, request):
    response = client_for(request.getfixturevalue(who)).get(path.format(pk=asset.pk))
    assert response.status_code == 404


@pytest.mark.parametrize("who", ["alice", "staff"])
@pytest.mark.parametrize("path", PAGES + [f"/assets/{{pk}}/files/{kind}/" for kind in FILES])
def test_the_owner_and_staff_see_the_asset_and_its_files(asset, path, who, request):
    response = client_for(request.getfixturevalue(who)).get(path.format(pk=asset.pk))
    # Withdrawal is the creator's act: the page refuses staff (they take an image down instead).
    assert response.status_code == (403 if (who, path) == ("staff", "/assets/{pk}/withdraw/") else 200)


def test_files_are_served_with_nosniff_private_caching_and_a_sandbox(asset, alice):
    response = client_for(alice).get(f"/assets/{asset.pk}/files/thumbnail/")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"] == "private, max-age=3600"
    assert "sandbox" in response["Content-Security-Policy"]
    original = client_for(alice).get(f"/assets/{asset.pk}/files/original/")
    assert original["Content-Disposition"].startswith("attachment")


def test_no_public_media_url_exists(asset, alice):
    assert client_for(alice).get("/media/" + asset.original.name).status_code == 404


@pytest.mark.parametrize("who", ["bob", "carol"])
def test_other_users_cannot_change_withdraw_or_retry_an_asset(asset, who, request):
    client = client_for(request.getfixturevalue(who))
    assert client.post(f"/assets/{asset.pk}/withdraw/").status_code == 404
    assert client.post(f"/assets/{asset.pk}/retry/").status_code == 404
    assert client.post(f"/assets/{asset.pk}/edit/", {"title": "mine now"}).status_code == 404
    assert client.patch(f"/api/assets/{asset.pk}/", {"title": "mine now"}, format="json").status_code == 404
    assert client.post(f"/api/assets/{asset.pk}/withdraw/").status_code == 404
    assert client.post("/api/assets/bulk/", {"ids": [asset.pk], "title": "x"}, format="json").status_code == 400
    asset.refresh_from_db()
    assert asset.title == "" and asset.withdrawn_at is None


def test_staff_can_correct_an_assets_title_but_not_withdraw_it(asset, staff):
    client = client_for(staff)
    assert client.patch(f"/api/assets/{asset.pk}/", {"title": "Fixed title"}, format="json").status_code == 200
    assert asset.events.filter(kind="metadata_changed", actor=staff).exists()
    assert client.post(f"/api/assets/{asset.pk}/withdraw/").status_code == 403
    assert client.post(f"/assets/{asset.pk}/withdraw/").status_code == 403
    asset.refresh_from_db()
    assert asset.title == "Fixed title" and asset.withdrawn_at is None
    assert not asset.events.filter(kind="withdrawn").exists()


def test_api_lists_only_my_assets_and_staff_see_all(asset, alice, bob, carol, staff):
    assert client_for(alice).get("/api/assets/").json()["count"] == 1
    assert client_for(bob).get("/api/assets/").json()["count"] == 0
    assert client_for(carol).get("/api/assets/").json()["count"] == 0
    assert client_for(staff).get("/api/assets/").json()["count"] == 1
    assert client_for(bob).get(f"/api/assets/{asset.pk}/").status_code == 404
    assert client_for(staff).get(f"/api/assets/{asset.pk}/").status_code == 200


def test_anonymous_api_requests_are_refused(asset):
    anonymous = client_for(None)
    assert anonymous.get("/api/assets/").status_code == 401
    assert anonymous.get(f"/api/assets/{asset.pk}/").status_code == 401
    assert anonymous.post("/api/assets/", {}).status_code == 401
    assert Asset.objects.count() == 1


def test_only_creators_can_upload(carol, staff):
    for user in (carol, staff):
        client = client_for(user)
        assert client.get("/upload/").status_code == 403
        response = client.post("/api/assets/", {"file": SimpleUploadedFile("a.jpg", photo_bytes("rocket"))})
        assert response.status_code == 403
        assert "Only creators can upload" in response.json()["detail"]
    assert Asset.objects.count() == 0


def test_token_authentication_works_for_the_api(asset, alice):
    token = APIClient().post("/api/auth/token/", {"username": "alice", "password": "correct horse battery"})
    assert token.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    assert client.get("/api/assets/").json()["count"] == 1
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/api/assets/").status_code == 401


def test_my_uploads_shows_only_my_own_images(asset, alice, bob, staff):
    assert f"/assets/{asset.pk}/" in client_for(alice).get("/my/uploads/").content.decode()
    assert f"/assets/{asset.pk}/" not in client_for(bob).get("/my/uploads/").content.decode()
    assert f"/assets/{asset.pk}/" not in client_for(staff).get("/my/uploads/").content.decode()


@pytest.mark.parametrize("path", ["/upload/", "/my/uploads/", "/accounts/me/"])
def test_anonymous_visitors_must_log_in_for_creator_pages(db, path):
    response = client_for(None).get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_anonymous_visitors_cannot_change_anything(asset):
    anonymous = client_for(None)
    assert anonymous.post(f"/assets/{asset.pk}/withdraw/").status_code == 302
    assert anonymous.post(f"/assets/{asset.pk}/retry/").status_code == 302
    assert anonymous.patch(f"/api/assets/{asset.pk}/", {"title": "x"}, format="json").status_code == 401
    assert anonymous.post(f"/api/assets/{asset.pk}/withdraw/").status_code == 401
    assert anonymous.post("/api/assets/bulk/", {"ids": [asset.pk], "title": "x"}, format="json").status_code == 401
    asset.refresh_from_db()
    assert asset.title == "" and asset.withdrawn_at is None


def test_a_buyer_sees_my_uploads_empty_and_no_upload_link(carol):
    page = client_for(carol).get("/my/uploads/").content.decode()
    assert "You have not uploaded anything yet." in page
    assert 'href="/upload/">Upload</a>' not in client_for(carol).get("/").content.decode()
