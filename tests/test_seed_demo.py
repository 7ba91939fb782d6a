from django.core.management import call_command

from marketplace.accounts.models import User
from marketplace.catalog.models import Asset


def test_demo_data_is_real_photos_ready_to_browse_and_is_not_duplicated(db, capsys, settings):
    call_command("seed_demo")
    first = capsys.readouterr().out
    assert "creator / creator-demo-pass" in first and "admin / admin-demo-pass" in first
    # The demo run's base model: a tiny Stable Diffusion pipeline that loads like a real one.
    assert f"Demo base model for training (a tiny Stable Diffusion): {settings.TRAINING_DEMO_BASE_MODEL}" in first
    assert (settings.TRAINING_DEMO_BASE_MODEL / "unet" / "diffusion_pytorch_model.safetensors").is_file()
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


def test_make_run_finds_when_the_curation_model_cannot_be_had_here(db, settings, monkeypatch, tiny_clip):
    from huggingface_hub import constants

    from marketplace.core import demo_models

    # A local checkpoint (an offline site's setting) is used as it is.
    assert demo_models.curation_model_problem() is None
    # The default pretrained tag, not cached, with the hub out of reach: the problem names the setting to fix.
    settings.CURATION_CLIP_MODEL, settings.CURATION_CLIP_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    problem = demo_models.curation_model_problem()
    assert "CURATION_CLIP_PRETRAINED" in problem and "HF_HUB_OFFLINE" in problem
    # So is an hf-hub: model that is not cached, named by its setting.
    settings.CURATION_CLIP_MODEL, settings.CURATION_CLIP_PRETRAINED = "hf-hub:example/not-cached-clip", ""
    problem = demo_models.curation_model_problem()
    assert "CURATION_CLIP_MODEL" in problem and "HF_HUB_OFFLINE" in problem
    settings.CURATION_CLIP_MODEL = "ViT-B-32"
    # A missing checkpoint file is a problem too, named as such.
    settings.CURATION_CLIP_PRETRAINED = "/nowhere/model.safetensors"
    assert "does not exist" in demo_models.curation_model_problem()
