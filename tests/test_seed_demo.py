from django.core.management import call_command

from marketplace.accounts.models import User
from marketplace.catalog.models import Asset


def test_demo_data_is_real_photos_ready_to_browse_and_is_not_duplicated(db, capsys):
    call_command("seed_demo")
    first = capsys.readouterr().out
    assert "creator / creator-demo-pass" in first and "admin / admin-demo-pass" in first
    creator = User.objects.get(username="creator")
    assert creator.is_creator and User.objects.get(username="admin").is_staff
    assert User.objects.get(username="buyer").is_buyer
    assets = Asset.objects.filter(owner=creator)
    assert assets.count() == 7
    assert set(assets.values_list("status", flat=True)) == {"ready"}
    assert assets.filter(location_removed=True).count() == 3  # the demo photos that carry GPS
    call_command("seed_demo")
    assert "(0 new images)" in capsys.readouterr().out
    assert Asset.objects.count() == 7 and User.objects.count() == 3


def test_the_demo_pack_publishes_itself_once_curation_has_passed_the_photos(
    db, tiny_clip, capsys, django_capture_on_commit_callbacks
):
    from marketplace.packs.models import Pack

    with django_capture_on_commit_callbacks(execute=True):  # the worker analyses the uploads (tiny local model)
        call_command("seed_demo")
    version = Pack.objects.get(slug="demo-everyday").versions.get()
    licences = {item.licence for item in version.items.all()}
    # Research-only and all-rights-reserved photos never enter a commercial pack.
    assert licences <= {"mkt-ai-commercial-1.0", "cc-by-4.0", "cc0-1.0"} and version.item_count >= 3
    call_command("seed_demo")
    assert Pack.objects.get(slug="demo-everyday").versions.count() == 1


def test_without_analyses_the_demo_pack_waits(db, capsys):
    from marketplace.packs import services
    from marketplace.packs.models import Pack

    call_command("seed_demo")
    assert "publishes itself once curation has analysed the photos" in capsys.readouterr().out
    pack = Pack.objects.get(slug="demo-everyday")
    assert pack.publish_when_eligible and not pack.versions.exists()
    assert services.publish_waiting_packs() == []  # still nothing eligible: no error, no version
