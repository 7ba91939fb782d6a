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
