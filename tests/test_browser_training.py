"""Training runs in a real browser (Debian's Chromium through Playwright), as staff and a licence holder use them.

Staff pick the demo preset on the launch form, queue a run and watch its page update live (status, steps,
ETA, images/s, worker, loss curve, validation samples, log), cancel it mid-run (the checkpoint is kept),
then let a second run finish and download its LoRA. The licence holder finds the run and its files; a
creator whose photos it used does not. Runs train in a thread beside the live server (a worker process's
stand-in: Celery is eager in tests, which would train inside the launch request), on the tiny Stable
Diffusion pipeline.
"""

import threading
from pathlib import Path

import pytest
from django.db import connection
from safetensors.torch import load_file

from tests.test_browser import browser, expect, log_in, page, server  # noqa: F401  (shared fixtures)
from tests.test_training_runs import (  # noqa: F401  (shared fixtures)
    licence,
    training_settings,
    version,
)
from training import services
from training.models import TrainingRun

pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]


@pytest.fixture
def worker_threads(monkeypatch):
    """Launching a run starts its training in a thread, as a worker would pick it up from the queue."""
    threads: list[threading.Thread] = []

    def train_in_background(run_id: int) -> None:
        def work():
            try:
                services.execute_run(run_id)
            finally:
                connection.close()

        thread = threading.Thread(target=work, name=f"training-run-{run_id}", daemon=True)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(services, "_enqueue", train_in_background)
    yield threads
    for run in TrainingRun.objects.exclude(status__in=TrainingRun.FINISHED):
        services.cancel_run(run, actor=run.launched_by)
    for thread in threads:
        thread.join(timeout=60)


def launch_demo_run(page, server, expect, licence, *, steps: int) -> int:
    page.goto(f"{server.url}/training/runs/new/?licence={licence.pk}")
    page.get_by_role("link", name="Demo (tiny model, CPU)").click()
    expect(page.locator("#id_resolution")).to_have_value("64")
    expect(page.locator("#id_licence")).to_have_value(str(licence.pk))  # kept when the preset was picked
    # The estimated peak GPU memory of the settings, before the run starts; it follows the form.
    expect(page.locator("#memory-peak")).to_contain_text("Estimated peak: about")
    expect(page.locator("#memory-presets li")).to_have_count(3)
    before = page.locator("#memory-peak").inner_text()
    page.fill("#id_resolution", "512")
    expect(page.locator("#memory-peak")).not_to_have_text(before)
    page.fill("#id_resolution", "64")
    page.fill("#id_max_steps", str(steps))
    page.fill("#id_validation_prompts", "a photo of a cat")
    page.get_by_role("button", name="Queue the run").click()
    expect(page).to_have_url(f"{server.url}/training/runs/{TrainingRun.objects.latest('pk').pk}/")
    return TrainingRun.objects.latest("pk").pk


def test_staff_watch_a_run_live_cancel_it_and_download_a_finished_runs_lora(
    server, page, expect, staff, carol, alice, licence, tiny_base, settings, worker_threads, tmp_path, browser
):
    settings.TRAINING_DEMO_BASE_MODEL = tiny_base
    log_in(page, server, expect, username=staff.username, next_path="/training/runs/")

    # A long run: watched live, then canceled.
    run_id = launch_demo_run(page, server, expect, licence, steps=400)
    expect(page.locator("#run-status")).to_have_text("Running")
    expect(page.locator("#run-worker")).to_contain_text("pid")
    # The step-20 previews: one per prompt (the staff's and the held-out caption), more as the run goes.
    expect(page.locator("#run-samples img").first).to_be_visible(timeout=90_000)
    expect(page.locator("#run-samples figcaption").first).to_have_text("step 20")
    step = int(page.locator("#run-step").inner_text())
    assert 20 <= step < 400
    expect(page.locator("#run-eta")).to_have_text(_seconds())
    expect(page.locator("#run-ips")).not_to_have_text("–")
    assert len(page.locator("#loss-train").get_attribute("points").split()) >= 2
    expect(page.locator("#run-log")).to_contain_text("Claimed by")
    sample = page.request.get(server.url + page.locator("#run-samples img").first.get_attribute("src"))
    assert sample.ok and sample.headers["content-type"] == "image/png"

    page.get_by_role("button", name="Cancel the run").click()
    expect(page.locator("#run-status")).to_have_text("Canceled", timeout=60_000)
    expect(page.locator("#run-log")).to_contain_text("the last checkpoint is kept")
    expect(page.locator("#run-cancel")).to_have_count(0)
    expect(page.locator("#run-usage tbody tr").first).not_to_contain_text("Recorded when the run ends")
    canceled = TrainingRun.objects.get(pk=run_id)
    assert 20 <= canceled.step < 400
    checkpoints = list((Path(settings.TRAINING_WORK_DIR) / str(run_id) / "output" / "checkpoints").iterdir())
    assert checkpoints, "the cancel kept no checkpoint"

    # A short run to its end: the page reloads with the outputs.
    finished_id = launch_demo_run(page, server, expect, licence, steps=12)
    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=90_000)
    expect(page.locator("#run-outputs a")).to_have_count(4)  # the LoRA in two formats, the grid, the card
    expect(page.locator("#run-usage tbody tr").first).not_to_contain_text("Recorded when the run ends")
    # Evaluated: the held-out loss from step 0 is charted with the training loss, the delivered step marked,
    # and the base-vs-LoRA grid shown.
    assert len(page.locator("#loss-validation").get_attribute("points").split()) >= 2
    expect(page.locator("#run-evaluation tbody tr").first).to_contain_text("base model")
    expect(page.locator("#run-evaluation tr.best")).to_have_count(1)
    expect(page.locator("#run-grid")).to_be_visible()
    for link, kind in (
        ("pytorch_lora_weights.safetensors", "lora_A"),
        ("pytorch_lora_weights_kohya.safetensors", "lora_down"),
    ):
        with page.expect_download() as download:
            page.get_by_role("link", name=link, exact=True).click()
        saved = tmp_path / link
        download.value.save_as(saved)
        assert any(kind in name for name in load_file(str(saved))), link

    # The runs list filters by status.
    page.goto(f"{server.url}/training/runs/?status=canceled")
    expect(page.get_by_role("link", name=f"#{run_id}", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=f"#{finished_id}", exact=True)).to_have_count(0)

    # The licence holder sees the run and downloads its files; alice, a creator in the pack, does not.
    holder = browser.new_context()
    holder_page = holder.new_page()
    log_in(holder_page, server, expect, username=carol.username, next_path="/training/runs/")
    holder_page.get_by_role("link", name=f"#{finished_id}", exact=True).click()
    expect(holder_page.locator("#run-cancel")).to_have_count(0)  # only staff cancel
    grid = holder_page.request.get(f"{server.url}/training/runs/{finished_id}/files/grid/")
    assert grid.ok and grid.body()[:8] == b"\x89PNG\r\n\x1a\n"
    holder.close()
    other = browser.new_context()
    other_page = other.new_page()
    log_in(other_page, server, expect, username=alice.username, next_path="/training/runs/")
    expect(other_page.get_by_role("link", name=f"#{finished_id}", exact=True)).to_have_count(0)
    assert other_page.request.get(f"{server.url}/training/runs/{finished_id}/").status == 404
    other.close()


def _seconds():
    import re

    return re.compile(r"^\d+ s$")


def test_staff_train_every_family_on_its_tiny_demo_model_from_the_browser(
    server, page, expect, staff, licence, tiny_base, settings, worker_threads, tmp_path
):
    """Done as issue 13 asks: from the browser, a run of each family on the demo pack; each is watched to its
    end with the held-out loss charted, the evaluation table and the base-vs-LoRA grid, and delivers its LoRA
    in the diffusers format and (where ComfyUI has names for it) the kohya format."""
    from marketplace.core import demo_models
    from training.engine import registry

    settings.TRAINING_DEMO_BASE_MODEL = tiny_base
    demos = [model for model in registry.BASE_MODELS if model.demo and model.family != "sd"]  # SD: the test above
    for model in demos:
        demo_models.build_demo_model(model.family)
    log_in(page, server, expect, username=staff.username, next_path="/training/runs/")
    for model in demos:
        page.goto(f"{server.url}/training/runs/new/?licence={licence.pk}")
        page.get_by_role("link", name=model.label, exact=True).click()
        expect(page.locator("#id_base_model_key")).to_have_value(model.key)
        expect(page.locator("#memory-peak")).to_contain_text("Estimated peak: about")
        page.fill("#id_max_steps", "4")
        page.fill("#id_checkpoint_every", "2")
        page.fill("#id_validation_every", "0")
        page.fill("#id_validation_steps", "2")
        page.get_by_role("button", name="Queue the run").click()
        run = TrainingRun.objects.latest("pk")
        expect(page).to_have_url(f"{server.url}/training/runs/{run.pk}/")
        expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=120_000)
        run.refresh_from_db()
        assert run.family == model.family and run.base_model_key == model.key, model.key
        assert len(page.locator("#loss-validation").get_attribute("points").split()) == 3  # steps 0, 2, 4
        expect(page.locator("#run-evaluation tr.best")).to_have_count(1)
        expect(page.locator("#run-grid")).to_be_visible()
        links = page.locator("#run-outputs a")
        expect(links.first).to_have_text("pytorch_lora_weights.safetensors")
        with page.expect_download() as download:
            links.first.click()
        saved = tmp_path / f"{model.key}.safetensors"
        download.value.save_as(saved)
        assert any(name.startswith("transformer.") or name.startswith("unet.") for name in load_file(str(saved)))
        assert bool(run.kohya_lora_path) == (
            page.get_by_role("link", name="pytorch_lora_weights_kohya.safetensors").count() == 1
        )
