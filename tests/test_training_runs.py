"""Training runs in Django: launching on a licence, the Celery task (eager here), the lease that keeps a
redelivered task from training a run twice, cancel and revocation, and who sees which run and its files.

CPU, a tiny Stable Diffusion pipeline built offline, and a real published pack with its WebDataset export."""

import time
import uuid
from pathlib import Path

import pytest
import torch
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from marketplace.accounts.services import register_user
from marketplace.commerce.models import PackLicence
from marketplace.commerce.signals import licence_revoked
from marketplace.packs import services as packs
from marketplace.packs.models import PackExport
from tests.commerce_helpers import paid_licence
from tests.training_helpers import resume_on_an_empty_machine, stop_at
from training import services
from training.models import TrainingRun, TrainingUsage

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

HYPERPARAMETERS = dict(
    resolution=64,
    batch_size=2,
    max_steps=6,
    learning_rate=1e-3,
    checkpoint_every=2,
    validation_every=3,
    validation_prompts=["a photo of a cat"],
    validation_steps=2,
)


@pytest.fixture(autouse=True)
def training_settings(settings, tmp_path):
    settings.TRAINING_WORK_DIR = tmp_path / "training-work"
    settings.TRAINING_DEVICE = "cpu"
    settings.TRAINING_LEASE_SECONDS = 300
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {}  # every base model's own checkpoint (demo: the tiny SD)
    settings.UPLOAD_MIN_SHORT_SIDE = 64  # small photos: the tiny run encodes them quickly


@pytest.fixture
def version(make_eligible_asset, alice, bob, staff, django_capture_on_commit_callbacks):
    make_eligible_asset(alice, "astronaut", size=(160, 120))
    make_eligible_asset(alice, "coffee", size=(120, 160))
    make_eligible_asset(bob, "chelsea", size=(128, 128))
    make_eligible_asset(bob, "rocket", size=(96, 144))  # four images: one is held out for evaluation
    pack = packs.save_pack(actor=staff, title="Everyday things", slug="everyday", price_cents=5000, use="commercial")
    with django_capture_on_commit_callbacks(execute=True):
        version = packs.publish_version(pack, actor=staff)
    export = version.exports.get(kind=PackExport.Kind.WEBDATASET)
    assert export.status == PackExport.Status.READY, export.error
    return version


@pytest.fixture
def licence(version, carol) -> PackLicence:
    return paid_licence(version, carol)


@pytest.fixture
def dave(db):
    return register_user(username="dave", email="dave@example.com", password="x" * 12, is_creator=False, is_buyer=True)


def client_for(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def launch(staff, licence, base_model_key="demo", **overrides) -> TrainingRun:
    """A queued run (tests run in a transaction: its task is not sent unless on-commit callbacks run). "demo" is
    the tiny Stable Diffusion pipeline (the `tiny_base` fixture builds it where TRAINING_DEMO_BASE_MODEL points)."""
    return services.launch_run(
        actor=staff, licence=licence, base_model_key=base_model_key, **{**HYPERPARAMETERS, **overrides}
    )


def form_data(licence, **overrides) -> dict:
    data = {
        "licence": str(licence.pk),
        "base_model_key": "demo",
        "rank": 16,
        "alpha": 16,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "max_steps": 6,
        "batch_size": 2,
        "gradient_accumulation": 1,
        "resolution": 64,
        "seed": 42,
        "mixed_precision": "bf16",
        "snr_gamma": 5.0,
        "caption_dropout": 0.05,
        "validation_prompts": "a photo of a cat\n",
        "validation_every": 3,
        "num_validation_images": 1,
        "validation_steps": 2,
        "validation_guidance": 7.5,
        "checkpoint_every": 2,
        "timestep_density": "logit_normal",
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "mode_scale": 1.29,
        "loss_weighting": "none",
        "timestep_shift": "",
        "guidance": 1.0,
        "holdout_fraction": 0.1,
    }
    return {**data, **overrides}


def test_a_full_run_through_the_task_succeeds_and_its_outputs_reach_staff_and_the_licence_holder_only(
    tiny_base, licence, staff, carol, dave, alice, django_capture_on_commit_callbacks
):
    staff_client = client_for(staff)
    page = staff_client.get(reverse("training:launch") + f"?licence={licence.pk}")
    assert page.status_code == 200
    assert f'<option value="{licence.pk}" selected>' in page.content.decode()
    assert 'name="snr_gamma" value="5.0"' in page.content.decode()  # the engine's defaults are shown

    with django_capture_on_commit_callbacks(execute=True):  # the task runs eagerly, on commit
        response = staff_client.post(reverse("training:launch"), form_data(licence))
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("training:detail", args=[run.pk])
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error + run.log_tail
    assert run.step == run.total_steps == 6 and run.images_per_second > 0
    assert run.worker_host and run.started_at and run.finished_at
    assert [point[0] for point in run.losses] == [1, 2, 3, 4, 5, 6]
    # Previews at steps 3 and 6 of two prompts: the staff's, and the held-out image's caption.
    assert [sample["step"] for sample in run.samples] == [3, 3, 6, 6]
    assert run.config["validation_prompts"] == ["a photo of a cat"] and "device" not in run.config

    # Usage attribution: every trained asset seen equally often (to within one), per asset and per creator;
    # the held-out one (evaluation only) is not counted.
    usages = list(TrainingUsage.objects.filter(run=run).select_related("asset"))
    titles = {"astronaut by alice", "coffee by alice", "chelsea by bob", "rocket by bob"}
    assert len(run.holdout_keys) == 1 and len(usages) == 3 and {usage.asset.title for usage in usages} < titles
    assert run.best_step is not None and run.evaluations[0]["step"] == 0
    assert all(e["validation_loss"] is not None for e in run.evaluations)
    seen = [usage.times_seen for usage in usages]
    assert max(seen) - min(seen) <= 1 and 6 <= sum(seen) <= 12  # 6 steps of 1 or 2 images
    assert all(usage.creator_id == usage.asset.owner_id for usage in usages)
    alice_seen = sum(usage.times_seen for usage in usages if usage.creator_id == alice.pk)

    # The page (and its JSON) for the licence holder, with the usage per creator and the downloads.
    carol_client = client_for(carol)
    detail = carol_client.get(reverse("training:detail", args=[run.pk])).content.decode()
    assert "Succeeded" in detail and "Alice Photo" in detail and f"<td>{alice_seen}</td>" in detail
    assert "<polyline" in detail and "pytorch_lora_weights.safetensors" in detail
    state = carol_client.get(reverse("training:status", args=[run.pk])).json()
    assert state["status"] == "succeeded" and state["step"] == 6 and len(state["samples"]) == 4
    assert carol_client.get(state["samples"][0]["url"])["Content-Type"] == "image/png"
    listing = carol_client.get(reverse("training:list")).content.decode()
    assert reverse("training:detail", args=[run.pk]) in listing

    lora = carol_client.get(reverse("training:file", args=[run.pk, "lora"]))
    assert lora.status_code == 200 and "attachment" in lora["Content-Disposition"]
    weights = b"".join(lora.streaming_content)
    grid = carol_client.get(reverse("training:file", args=[run.pk, "grid"]))
    assert grid.status_code == 200 and b"".join(grid.streaming_content).startswith(b"\x89PNG")
    card = b"".join(staff_client.get(reverse("training:file", args=[run.pk, "card"])).streaming_content).decode()
    assert licence.version.manifest_sha256 in card and str(licence.pk) in card and str(tiny_base) in card
    assert "Alice Photo" in card and "| rank | 16 |" in card
    assert "## Evaluation" in card and "| Held-out loss (lower is better) |" in card
    kohya = carol_client.get(reverse("training:file", args=[run.pk, "kohya"]))
    assert kohya.status_code == 200 and "attachment" in kohya["Content-Disposition"]
    from safetensors import safe_open

    kohya_file = services.work_folder(run) / "kohya.safetensors"
    kohya_file.write_bytes(b"".join(kohya.streaming_content))
    with safe_open(str(kohya_file), "pt") as handle:
        assert all(key.startswith("lora_unet_") for key in handle.keys())
        assert handle.metadata()["ss_network_dim"] == "16"

    # Nobody else sees the run or its files: another buyer, a creator whose images are in it, anonymous.
    for other in (dave, alice):
        client = client_for(other)
        assert client.get(reverse("training:detail", args=[run.pk])).status_code == 404
        assert client.get(reverse("training:file", args=[run.pk, "lora"])).status_code == 404
        assert client.get(reverse("training:status", args=[run.pk])).status_code == 404
        assert reverse("training:detail", args=[run.pk]) not in client.get(reverse("training:list")).content.decode()
    assert client_for().get(reverse("training:file", args=[run.pk, "lora"])).status_code == 302  # to log in

    # The downloaded LoRA loads into the base pipeline and changes its output.
    from diffusers import StableDiffusionPipeline

    folder = Path(services.work_folder(run)) / "download"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(weights)
    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    pipeline.set_progress_bar_config(disable=True)

    def generate():
        generator = torch.Generator().manual_seed(0)
        return torch.from_numpy(
            pipeline(
                "a photo of a cat", height=64, width=64, num_inference_steps=2, generator=generator, output_type="np"
            ).images  # fmt: skip
        )

    before = generate()
    pipeline.load_lora_weights(str(folder))
    assert not torch.allclose(before, generate(), atol=1e-4)

    # A finished run is left alone by a late redelivery.
    assert services.execute_run(run.pk) == services.Outcome.FINISHED


def test_cancel_a_queued_run_and_a_running_one_which_keeps_its_checkpoint(
    tiny_base, licence, staff, carol, monkeypatch
):
    queued = launch(staff, licence)
    assert client_for(carol).post(reverse("training:cancel", args=[queued.pk])).status_code == 403
    queued.refresh_from_db()
    assert queued.status == TrainingRun.Status.QUEUED and queued.cancel_requested_at is None
    with pytest.raises(PermissionDenied):
        services.cancel_run(queued, actor=carol)

    page = client_for(staff).get(reverse("training:detail", args=[queued.pk])).content.decode()
    assert 'id="run-cancel"' in page and reverse("training:status", args=[queued.pk]) in page  # polls while live
    assert 'id="run-cancel"' not in client_for(carol).get(reverse("training:detail", args=[queued.pk])).content.decode()
    response = client_for(staff).post(reverse("training:cancel", args=[queued.pk]))
    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.status == TrainingRun.Status.CANCELED and queued.finished_at
    assert services.execute_run(queued.pk) == services.Outcome.FINISHED  # its task, delivered later, does nothing

    running = launch(staff, licence)
    stop_at(monkeypatch, 3)
    assert services.execute_run(running.pk) == services.Outcome.CANCELED
    running.refresh_from_db()
    assert running.status == TrainingRun.Status.CANCELED and running.step == 3
    checkpoints = sorted(p.name for p in (services.work_folder(running) / "output" / "checkpoints").iterdir())
    assert checkpoints[-1] == "checkpoint-00000003"
    assert "Canceled at step 3" in running.log_tail and not running.lora_path
    # The images the kept checkpoint learned from are on record: 3 steps of 1 or 2.
    seen = list(TrainingUsage.objects.filter(run=running).values_list("times_seen", flat=True))
    assert 3 <= sum(seen) <= 6 and max(seen) - min(seen) <= 1


def test_a_redelivery_is_refused_while_the_lease_is_live_and_a_stale_run_is_taken_over_and_resumed(
    tiny_base, licence, staff, monkeypatch
):
    run = launch(staff, licence)
    # The first worker trains until step 3, then dies (simulated: stopped, then left "running").
    stop_at(monkeypatch, 3)
    services.execute_run(run.pk)
    monkeypatch.undo()
    dead_heartbeat = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING,
        cancel_requested_at=None,
        finished_at=None,
        heartbeat_at=dead_heartbeat,
        lease_token="first-worker",
        worker_host="gpu-1 (pid 1)",
    )

    # A redelivered task while the lease is live: refused, the run untouched.
    assert services.execute_run(run.pk) == services.Outcome.REFUSED
    from training import tasks

    assert tasks.run_training.delay(run.pk).get() == services.Outcome.REFUSED
    run.refresh_from_db()
    assert run.lease_token == "first-worker" and run.worker_host == "gpu-1 (pid 1)" and run.step == 3

    # The periodic recovery leaves a run with a live lease alone.
    assert services.requeue_stale_runs() == []
    # Once the lease is stale, the recovery sends the run to the queue again (the dead worker's message may
    # be lost): that delivery takes the run over and resumes from the checkpoint.
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=dead_heartbeat - timezone.timedelta(seconds=301))
    assert services.requeue_stale_runs() == [run.pk]  # eager here: the task ran to its end
    assert services.requeue_stale_runs() == []
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.step == 6
    assert run.lease_token != "first-worker" and "gpu-1" not in run.worker_host
    assert "Resumed from checkpoint-00000003 at step 3" in run.log_tail
    assert [point[0] for point in run.losses] == [1, 2, 3, 4, 5, 6]
    # The usage on record is an uninterrupted run's: the steps before the restart are not counted twice.
    from training.engine.train import TrainConfig, train

    shards = sorted((services.work_folder(run) / "data").glob("*.tar"))
    reference = train(TrainConfig(**{**run.config, "device": "cpu"}), shards, services.work_folder(run) / "reference")
    recorded = {u.asset.title.split(" by ")[0]: u.times_seen for u in TrainingUsage.objects.filter(run=run)}
    assert sum(recorded.values()) == sum(reference.usage.values())
    assert sorted(recorded.values()) == sorted(reference.usage.values())


def test_no_licence_no_run_and_a_revoked_licence_stops_its_runs(tiny_base, licence, staff, carol):
    queued = launch(staff, licence)
    running = launch(staff, licence)
    TrainingRun.objects.filter(pk=running.pk).update(status=TrainingRun.Status.RUNNING, heartbeat_at=timezone.now())

    licence.revoked_at, licence.revoked_reason = timezone.now(), "refunded"
    licence.save()
    licence_revoked.send(sender=PackLicence, licence_id=licence.pk)
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == TrainingRun.Status.CANCELED and queued.cancel_reason == "The licence was revoked."
    assert running.status == TrainingRun.Status.RUNNING and running.cancel_requested_at  # stops at its next step
    assert running.cancel_reason == "The licence was revoked."
    # Its worker died before it saw the request: a later delivery ends the run instead of training it.
    TrainingRun.objects.filter(pk=running.pk).update(heartbeat_at=timezone.now() - timezone.timedelta(seconds=301))
    assert services.execute_run(running.pk) == services.Outcome.CANCELED
    running.refresh_from_db()
    assert running.status == TrainingRun.Status.CANCELED and running.finished_at

    with pytest.raises(ValidationError, match="No licence, no run"):
        launch(staff, licence)
    with pytest.raises(ValidationError, match="No licence, no run"):
        services.launch_run(actor=staff, licence=None, base_model_key="demo")
    response = client_for(staff).post(reverse("training:launch"), form_data(licence))
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert TrainingRun.objects.count() == 2


def test_non_staff_cannot_launch(tiny_base, licence, carol, alice):
    for user in (carol, alice):
        client = client_for(user)
        assert client.get(reverse("training:launch")).status_code == 403
        assert client.post(reverse("training:launch"), form_data(licence)).status_code == 403
        with pytest.raises(PermissionDenied):
            launch(user, licence)
    assert not TrainingRun.objects.exists()


def test_a_run_waits_for_the_webdataset_download(tiny_base, licence, staff):
    PackExport.objects.filter(kind=PackExport.Kind.WEBDATASET).update(status=PackExport.Status.BUILDING)
    with pytest.raises(ValidationError, match="still being built"):
        launch(staff, licence)


def test_bad_hyperparameters_are_form_errors(tiny_base, licence, staff):
    data = form_data(licence, rank=0, resolution=65, learning_rate=3, caption_dropout=1.5)
    response = client_for(staff).post(reverse("training:launch"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) >= {"rank", "resolution", "learning_rate", "caption_dropout"}
    assert "multiple of 8" in " ".join(errors["resolution"])
    assert not TrainingRun.objects.exists()


def test_each_bad_value_is_reported_on_its_own_field_whatever_the_value_holds(tiny_base):
    with pytest.raises(services.ConfigError) as refused:
        services.build_config(str(tiny_base), lr_scheduler="cosine; rank 5", rank=0)
    errors = refused.value.message_dict
    assert set(errors) == {"lr_scheduler", "rank"}
    assert "cosine; rank 5" in errors["lr_scheduler"][0] and "cosine" not in errors["rank"][0]


def test_a_missing_base_model_fails_the_run_with_a_message_naming_base_model(
    tiny_base, licence, staff, tmp_path, settings
):
    missing = tmp_path / "no-such-model"
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {"sd15": str(missing)}  # an operator's local copy, not there
    run = launch(staff, licence, "sd15")
    assert services.execute_run(run.pk) == services.Outcome.FAILED
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "base_model" in run.error and str(missing) in run.error
    assert run.error in run.log_tail


@pytest.mark.django_db(transaction=True)
def test_the_lease_is_renewed_through_a_long_set_up_and_a_worker_that_lost_it_stops(
    tiny_base, licence, staff, settings, monkeypatch
):
    """A base model downloading or a large pack being cached calls no engine callback for minutes: the
    heartbeat thread keeps the lease alive, so a redelivery is not mistaken for a dead worker's run."""
    import training.engine.train as engine

    settings.TRAINING_LEASE_SECONDS = 3  # a beat every second
    seen = {}

    def slow_set_up(config, data_paths, output_dir, *, callbacks, evaluator=None):
        run = TrainingRun.objects.get()
        time.sleep(2.5)
        seen["renewed"] = TrainingRun.objects.get(pk=run.pk).heartbeat_at > run.heartbeat_at
        seen["redelivery"] = services.claim_run(run.pk)[1]
        TrainingRun.objects.filter(pk=run.pk).update(lease_token="taken-over-elsewhere")
        time.sleep(1.5)
        seen["stops"] = callbacks.should_stop()
        raise engine.ModelUnavailable("stop here")

    monkeypatch.setattr(engine, "train", slow_set_up)
    launch(staff, licence)  # committed for real here: the (eager) task runs it at once
    assert seen == {"renewed": True, "redelivery": services.Outcome.REFUSED, "stops": True}


def test_the_run_api_lets_staff_launch_and_cancel_and_each_buyer_read_only_their_own(
    tiny_base, licence, staff, carol, dave
):
    from rest_framework.test import APIClient

    api = APIClient()
    assert api.get("/api/training-runs/").status_code == 401
    api.force_authenticate(carol)
    body = {"licence": str(licence.pk), "base_model_key": "demo", "hyperparameters": HYPERPARAMETERS}
    assert api.post("/api/training-runs/", body, format="json").status_code == 403  # buyers do not launch

    api.force_authenticate(staff)
    bad = api.post("/api/training-runs/", {**body, "hyperparameters": {"rank": 0}}, format="json")
    assert bad.status_code == 400 and "rank" in bad.json()
    unknown = api.post("/api/training-runs/", {**body, "licence": str(uuid.uuid4())}, format="json")
    assert unknown.status_code == 400 and "No licence, no run." in str(unknown.json())
    created = api.post("/api/training-runs/", body, format="json")
    assert created.status_code == 201, created.content
    run = created.json()
    assert (run["status"], run["pack"], run["licence"], run["files"]) == ("queued", "everyday", str(licence.pk), {})

    api.force_authenticate(carol)  # the licence holder reads it, cannot cancel it
    assert [r["id"] for r in api.get("/api/training-runs/").json()["results"]] == [run["id"]]
    assert api.post(f"/api/training-runs/{run['id']}/cancel/").status_code == 403
    api.force_authenticate(dave)  # another buyer sees nothing
    assert api.get("/api/training-runs/").json()["results"] == []
    assert api.get(f"/api/training-runs/{run['id']}/").status_code == 404

    api.force_authenticate(staff)
    canceled = api.post(f"/api/training-runs/{run['id']}/cancel/")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert api.get("/api/training-runs/", {"status": "canceled"}).json()["count"] == 1


def test_presets_fill_the_launch_form_and_the_demo_one_appears_once_its_model_is_built(
    tiny_base, licence, staff, carol, settings, tmp_path
):
    page = reverse("training:launch")
    settings.TRAINING_DEMO_BASE_MODEL = tmp_path / "not-built-yet"
    response = client_for(staff).get(page)
    keys = [preset.key for preset in response.context["presets"]]
    assert keys[:3] == ["sd15", "sd21", "sdxl"] and "demo" not in keys
    assert 'data-preset="demo"' not in response.content.decode()
    form = client_for(staff).get(page, {"preset": "demo"}).context["form"]
    assert not form.initial.get("base_model_key")  # an unknown or unavailable preset fills nothing

    settings.TRAINING_DEMO_BASE_MODEL = tiny_base
    response = client_for(staff).get(page, {"preset": "demo", "licence": str(licence.pk)})
    assert 'data-preset="demo"' in response.content.decode()
    form = response.context["form"]
    assert form.initial["base_model_key"] == "demo" and form.initial["licence"] == licence
    assert form.initial["resolution"] == 64 and form.initial["max_steps"] == 60
    html = response.content.decode()
    assert '<option value="demo" selected>' in html and 'name="resolution" value="64"' in html
    assert f"<code>{tiny_base}</code>" in html  # the checkpoint it trains from
    sdxl = client_for(staff).get(page, {"preset": "sdxl"}).context["form"].initial
    assert sdxl["base_model_key"] == "sdxl" and sdxl["resolution"] == 1024
    assert sdxl["gradient_checkpointing"] is True
    # Only staff see the form at all.
    assert client_for(carol).get(page, {"preset": "demo"}).status_code == 403


def test_the_api_launches_from_a_preset_with_overrides_and_explains_a_bad_one(tiny_base, licence, staff, settings):
    from rest_framework.test import APIClient

    settings.TRAINING_DEMO_BASE_MODEL = tiny_base
    api = APIClient()
    api.force_authenticate(staff)
    url = "/api/training-runs/"
    created = api.post(
        url, {"licence": str(licence.pk), "preset": "demo", "hyperparameters": {"max_steps": 7}}, format="json"
    )
    assert created.status_code == 201, created.content
    run = TrainingRun.objects.get(pk=created.json()["id"])
    assert run.base_model == str(tiny_base)
    assert run.config["resolution"] == 64 and run.config["rank"] == 4 and run.config["max_steps"] == 7
    unknown = api.post(url, {"licence": str(licence.pk), "preset": "sd9"}, format="json")
    assert unknown.status_code == 400 and "these exist: sd15, sd21, sdxl," in unknown.json()["preset"][0]
    assert "demo" in unknown.json()["preset"][0]
    nothing = api.post(url, {"licence": str(licence.pk)}, format="json")
    assert nothing.status_code == 400 and "preset" in nothing.json()["base_model_key"][0]
    assert TrainingRun.objects.count() == 1


def test_a_run_taken_over_on_another_machine_resumes_from_its_checkpoint_in_storage(
    tiny_base, licence, staff, monkeypatch, settings, tmp_path
):
    from django.core.files.storage import default_storage
    from safetensors.torch import load_file

    run = launch(staff, licence)
    stop_at(monkeypatch, 3)
    services.execute_run(run.pk)
    monkeypatch.undo()
    run.refresh_from_db()
    # Each checkpoint is mirrored to media storage; only the latest is kept there.
    assert run.checkpoint_path.endswith("checkpoint-00000003.tar")
    _, stored = default_storage.listdir(f"training/{run.pk}/checkpoints")
    assert stored == ["checkpoint-00000003.tar"]

    # The worker died; the run is taken over on a machine whose work folder is empty.
    run = resume_on_an_empty_machine(run, settings, tmp_path / "another-machine", from_step=3)
    assert run.step == 6 and run.checkpoint_path == ""  # done: the resumable state is deleted
    assert default_storage.listdir(f"training/{run.pk}/checkpoints") == ([], [])

    uninterrupted = launch(staff, licence)
    assert services.execute_run(uninterrupted.pk) == services.Outcome.SUCCEEDED
    uninterrupted.refresh_from_db()
    resumed = load_file(default_storage.path(run.lora_path))
    expected = load_file(default_storage.path(uninterrupted.lora_path))
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-5), name


def test_a_damaged_checkpoint_in_storage_fails_the_run_with_a_reason(tiny_base, licence, staff, settings, tmp_path):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    run = launch(staff, licence)
    bad = default_storage.save(f"training/{run.pk}/checkpoints/checkpoint-00000002.tar", ContentFile(b"not a tar"))
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint_path=bad)
    assert services.execute_run(run.pk) == services.Outcome.FAILED
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "checkpoint in storage" in run.error and "cannot be restored" in run.error
