"""The base-model registry and its licences: every family has a base model and a demo, operators point keys at
their own checkpoints, a run names a registry key (an unknown one is refused), a pack licensed for commercial
models never trains on a non-commercial base model, and the model card states both licences.

No training here: runs are launched (queued), and model cards rendered from them. On SQLite and, with
DATABASE_URL=postgres://..., on PostgreSQL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.core import demo_models
from marketplace.packs import services as packs
from marketplace.packs.models import PackExport
from tests import process_helpers
from tests.commerce_helpers import paid_licence
from tests.test_hostile_input import ALLOWED_TAGS, rendered
from tests.test_training_runs import training_settings  # noqa: F401  (autouse: runs' settings for tests)
from training import base_models, presets, services
from training.engine import registry
from training.engine.families import FAMILY_MODULES
from training.engine.train import TrainConfig
from training.modelcard import render_model_card
from training.models import TrainingRun

SHORT = {"max_steps": 2, "resolution": 64}


@pytest.fixture
def pack_licence(make_eligible_asset, alice, carol, staff, django_capture_on_commit_callbacks):
    """carol's licence of a published pack of `use` ("commercial" or "research"), its WebDataset download ready."""
    make_eligible_asset(alice, "coffee", size=(120, 160))

    def licence_of(use: str):
        pack = packs.save_pack(actor=staff, title=f"{use} photos", slug=use, price_cents=2000, use=use)
        with django_capture_on_commit_callbacks(execute=True):
            version = packs.publish_version(pack, actor=staff)
        assert version.exports.get(kind=PackExport.Kind.WEBDATASET).status == PackExport.Status.READY
        return paid_licence(version, carol)

    return licence_of


@pytest.fixture
def commercial_licence(pack_licence):
    return pack_licence("commercial")


@pytest.fixture
def research_licence(pack_licence):
    return pack_licence("research")


def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


# --- the registry (no database) ---------------------------------------------------------------------------


def test_every_family_has_a_base_model_and_a_demo_and_every_entry_names_a_family_that_exists():
    real = {model.family for model in registry.BASE_MODELS if not model.demo}
    demos = [model.family for model in registry.BASE_MODELS if model.demo]
    assert real == set(FAMILY_MODULES) and sorted(demos) == sorted(FAMILY_MODULES)  # one demo per family
    for model in registry.BASE_MODELS:
        assert model.family in FAMILY_MODULES, model.key
        assert registry.get(model.key) is model
        assert model.licence.name and model.licence.spdx_id and isinstance(model.commercial_use, bool)
        if model.demo:
            assert model.default_checkpoint == "" and model.commercial_use
        else:
            owner, _, name = model.default_checkpoint.partition("/")
            assert owner and name and " " not in model.default_checkpoint, model.key  # a hub id
            assert model.licence.url.startswith("https://"), model.key
        TrainConfig(base_model="-", **model.recommended)  # every recommendation is a valid configuration
    with pytest.raises(ValueError, match="unknown family 'sd4'"):
        registry.BaseModel("x", "X", "sd4", "a/b", registry.APACHE_2, "")
    with pytest.raises(TypeError):
        registry.get("sd15").recommended["rank"] = 1  # the registry is read-only


def test_the_licences_are_the_published_ones():
    by_key = registry.BY_KEY
    for key in ("flux1-schnell", "flux2-klein-4b", "qwen-image", "z-image-turbo", "chroma"):
        assert by_key[key].licence.spdx_id == "Apache-2.0" and by_key[key].commercial_use, key
    for key in ("flux1-dev", "flux2-klein-9b"):
        assert not by_key[key].commercial_use and "Non-Commercial" in by_key[key].licence.name, key
    assert by_key["sd15"].licence.spdx_id == "CreativeML-OpenRAIL-M"
    assert by_key["sdxl"].licence is by_key["sd21"].licence and "RAIL++" in by_key["sdxl"].licence.name
    for key in ("sd35-medium", "sd35-large"):
        community = by_key[key].licence
        assert community.name == "Stability AI Community License" and community.commercial_use
        assert "USD 1M" in community.commercial_condition and "USD 1M" in community.commercial_summary
    assert by_key["flux1-dev"].licence.commercial_summary == "not allowed"
    assert by_key["flux1-dev"].recommended["guidance"] == 1.0  # guidance-distilled: its embedding while training
    assert by_key["flux1-schnell"].recommended["validation_steps"] == 4  # timestep-distilled


def test_the_registry_imports_no_model_library_and_no_django():
    code = (
        "import sys, training.engine.registry as r; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'django') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=process_helpers.ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_launch_form_offers_every_hyperparameter_the_engine_takes():
    from training.forms import LaunchForm

    assert set(LaunchForm.base_fields) == {"licence", "base_model_key", *services.LAUNCH_FIELDS}


def test_a_tiny_builder_is_found_without_importing_it():
    assert registry.has_tiny_builder("sd") and registry.has_tiny_builder("sdxl")
    assert not registry.has_tiny_builder("no_such_family")


# --- this installation's checkpoints ------------------------------------------------------------------------


def test_the_environment_points_a_key_at_an_operators_checkpoint(tmp_path):
    env = process_helpers.marketplace_env(
        tmp_path / "var", TRAINING_BASE_MODEL_CHECKPOINTS="sdxl=/srv/models/sdxl , flux1-dev = org/dev-copy"
    )
    code = (
        "import json; from training import base_models; "
        "print(json.dumps({e.key: [e.checkpoint, e.overridden] for e in base_models.available_base_models()}))"
    )
    checkpoints = json.loads(process_helpers.manage(env, "shell", "-c", code).strip().splitlines()[-1])
    assert checkpoints["sdxl"] == ["/srv/models/sdxl", True]
    assert checkpoints["flux1-dev"] == ["org/dev-copy", True]
    assert checkpoints["sd15"] == ["stable-diffusion-v1-5/stable-diffusion-v1-5", False]

    env["TRAINING_BASE_MODEL_CHECKPOINTS"] = "sdxl"  # no checkpoint: refused as the process starts
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=process_helpers.ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "each entry is key=hub-id-or-path, not 'sdxl'" in done.stderr


def test_an_unknown_key_in_the_setting_is_a_configuration_error(settings):
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {"sdxl-typo": "/srv/models/sdxl"}
    with pytest.raises(ImproperlyConfigured, match="sdxl-typo"):
        base_models.available_base_models()


def test_demo_models_are_offered_once_built_and_a_family_needs_its_tiny_builder(settings, tmp_path):
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {}
    settings.TRAINING_DEMO_BASE_MODEL = tmp_path / "models" / "tiny-sd"
    keys = [entry.key for entry in base_models.available_base_models()]
    assert not [key for key in keys if key.startswith("demo")]
    assert keys == [model.key for model in registry.BASE_MODELS if not model.demo]

    # A complete tiny SDXL pipeline (its marker says so) beside the SD one: "demo-sdxl" is offered, from there.
    sdxl = demo_models.demo_model_folder("sdxl")
    assert sdxl == tmp_path / "models" / "tiny-sdxl"
    sdxl.mkdir(parents=True)
    (sdxl / "model_index.json").write_text("{}")
    (sdxl / "tiny_pipeline.json").write_text(json.dumps({"version": 1, "family": "sd3"}))  # another family's
    assert "demo-sdxl" not in [entry.key for entry in base_models.available_base_models()]
    (sdxl / "tiny_pipeline.json").write_text(json.dumps({"version": 1, "family": "sdxl"}))
    offered = {entry.key: entry for entry in base_models.available_base_models()}
    assert offered["demo-sdxl"].checkpoint == str(sdxl) and "demo" not in offered
    assert "demo-sdxl" in [preset.key for preset in presets.available_presets()]
    # An operator may point a demo key elsewhere; it is offered only where a tiny pipeline is built.
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {"demo-sdxl": str(tmp_path / "elsewhere")}
    assert "demo-sdxl" not in [entry.key for entry in base_models.available_base_models()]


# --- launching ----------------------------------------------------------------------------------------------


def test_a_run_records_its_key_and_trains_the_configured_checkpoint(commercial_licence, staff, settings):
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {"sdxl": "/srv/models/sdxl"}
    run = services.launch_run(actor=staff, licence=commercial_licence, base_model_key="sdxl", **SHORT)
    run.refresh_from_db()
    assert (run.base_model_key, run.base_model, run.config["base_model"]) == (
        "sdxl",
        "/srv/models/sdxl",
        "/srv/models/sdxl",
    )
    schnell = services.launch_run(actor=staff, licence=commercial_licence, base_model_key="flux1-schnell", **SHORT)
    assert schnell.base_model == "black-forest-labs/FLUX.1-schnell" and schnell.base_model_key == "flux1-schnell"


def test_an_unknown_or_unbuilt_base_model_is_refused_with_the_keys_that_exist(
    commercial_licence, staff, settings, tmp_path
):
    with pytest.raises(ValidationError) as refused:
        services.launch_run(actor=staff, licence=commercial_licence, base_model_key="sd9", **SHORT)
    message = refused.value.message_dict["base_model_key"][0]
    assert "Unknown base model 'sd9'" in message and "sd15, sd21, sdxl, flux1-schnell" in message
    settings.TRAINING_DEMO_BASE_MODEL = tmp_path / "not-built"
    with pytest.raises(ValidationError, match="The demo model 'demo' .* is not built on this machine"):
        services.launch_run(actor=staff, licence=commercial_licence, base_model_key="demo", **SHORT)
    with pytest.raises(ValidationError, match="Pick a base model"):
        services.launch_run(actor=staff, licence=commercial_licence, base_model_key="", **SHORT)

    api = APIClient()
    api.force_authenticate(staff)
    response = api.post(
        "/api/training-runs/", {"licence": str(commercial_licence.pk), "base_model_key": "sd9"}, format="json"
    )
    assert response.status_code == 400 and "Unknown base model 'sd9'" in response.json()["base_model_key"][0]
    assert not TrainingRun.objects.exists()


def test_a_commercial_pack_cannot_train_on_flux1_dev_while_a_research_pack_can(
    commercial_licence, research_licence, staff
):
    assert commercial_licence.terms["use"] == "commercial" and research_licence.terms["use"] == "research"
    with pytest.raises(ValidationError) as refused:
        services.launch_run(actor=staff, licence=commercial_licence, base_model_key="flux1-dev", **SHORT)
    message = refused.value.message_dict["base_model_key"][0]
    assert "FLUX.1 [dev] Non-Commercial License" in message  # the base model's licence
    assert f"pack licence of {commercial_licence.version} (Commercial models)" in message  # and the pack's
    allowed = message.split("Base models whose licences allow commercial use: ")[1]
    assert "FLUX.1 [schnell] (flux1-schnell)" in allowed and "Stable Diffusion 3.5 Medium (sd35-medium)" in allowed
    assert "flux1-dev" not in allowed and "flux2-klein-9b" not in allowed
    with pytest.raises(ValidationError, match="FLUX Non-Commercial License"):
        services.launch_run(actor=staff, licence=commercial_licence, base_model_key="flux2-klein-9b", **SHORT)
    assert not TrainingRun.objects.exists()

    run = services.launch_run(actor=staff, licence=research_licence, base_model_key="flux1-dev", **SHORT)
    assert run.base_model == "black-forest-labs/FLUX.1-dev" and run.status == TrainingRun.Status.QUEUED

    # The launch form shows the refusal on the base model's field, and launches nothing.
    form = {**_form_data(presets.get_preset("flux1-dev")), "licence": str(commercial_licence.pk)}
    response = staff_client(staff).post(reverse("training:launch"), form)
    assert response.status_code == 200
    assert "FLUX.1 [dev] Non-Commercial License" in " ".join(response.context["form"].errors["base_model_key"])
    assert TrainingRun.objects.count() == 1


def _form_data(preset) -> dict:
    """The launch form as a preset fills it (empty values for None)."""
    values = preset.form_initial()
    defaults = TrainConfig(base_model="-")
    data = {}
    for name in (*services.LAUNCH_FIELDS, "base_model_key"):
        value = values.get(name, getattr(defaults, name, None))
        if isinstance(value, bool):
            if value:
                data[name] = "on"
            continue
        data[name] = "" if value is None else value
    data["validation_prompts"] = "a photo"
    return data


def test_the_api_launches_a_preset_with_the_registrys_recommendations(research_licence, staff):
    api = APIClient()
    api.force_authenticate(staff)
    body = {"licence": str(research_licence.pk), "preset": "flux1-dev", "hyperparameters": {"max_steps": 3}}
    created = api.post("/api/training-runs/", body, format="json")
    assert created.status_code == 201, created.content
    run = created.json()
    assert (run["base_model_key"], run["base_model"]) == ("flux1-dev", "black-forest-labs/FLUX.1-dev")
    recommended = registry.get("flux1-dev").recommended
    assert run["config"]["guidance"] == recommended["guidance"] == 1.0
    assert run["config"]["resolution"] == 1024 and run["config"]["max_steps"] == 3
    assert run["config"]["validation_guidance"] == 3.5


def test_only_staff_launch_on_any_base_model(research_licence, carol, alice):
    for user in (carol, alice):
        with pytest.raises(PermissionDenied):
            services.launch_run(actor=user, licence=research_licence, base_model_key="flux1-dev", **SHORT)
        api = APIClient()
        api.force_authenticate(user)
        body = {"licence": str(research_licence.pk), "base_model_key": "flux1-dev"}
        assert api.post("/api/training-runs/", body, format="json").status_code == 403
    assert not TrainingRun.objects.exists()


def test_the_launch_page_lists_base_models_with_family_licence_and_commercial_use(commercial_licence, staff, settings):
    settings.TRAINING_BASE_MODEL_CHECKPOINTS = {"sdxl": "/srv/models/sdxl"}
    html = staff_client(staff).get(reverse("training:launch")).content.decode()
    table = html[html.index('id="base-models"') : html.index("</table>")]
    rows = {row.split('"', 1)[0]: row for row in table.split('data-base-model="')[1:]}
    assert list(rows)[:3] == ["sd15", "sd21", "sdxl"]
    assert '<td class="commercial">no</td>' in rows["flux1-dev"]
    assert '<td class="commercial">yes</td>' in rows["flux1-schnell"]
    assert "FLUX.1 [dev] Non-Commercial License" in rows["flux1-dev"]
    assert f'href="{registry.get("flux1-dev").licence.url}"' in rows["flux1-dev"]  # the licence text is linked
    assert "yes, for organisations and individuals with under USD 1M" in rows["sd35-medium"]
    assert "<code>/srv/models/sdxl</code>" in rows["sdxl"] and "(configured)" in rows["sdxl"]
    assert "<td>flux2</td>" in rows["flux2-klein-4b"] and "Apache License 2.0" in rows["flux2-klein-4b"]
    # The form's choices say the same in a line each.
    assert "FLUX.1 [dev] · flux · FLUX.1 [dev] Non-Commercial License · commercial use not allowed" in html


# --- the model card ----------------------------------------------------------------------------------------


def _card(run) -> str:
    return render_model_card(run, final_step=run.total_steps, usage_rows=[], creators=[])


def test_the_model_card_states_both_licences_and_when_outputs_may_be_used_commercially(
    commercial_licence, research_licence, staff
):
    dev = _card(services.launch_run(actor=staff, licence=research_licence, base_model_key="flux1-dev", **SHORT))
    licences = dev[dev.index("## Licences") : dev.index("## Data lineage")]
    assert "may be used commercially only if both licences below allow it" in licences
    assert (
        "**Non-commercial use only: the pack's licence is for Non-commercial research and the base model's " in licences
    )
    assert "Base model licence (FLUX.1 \\[dev\\]):" in licences
    assert "- Licence: FLUX.1 \\[dev\\] Non-Commercial License (`LicenseRef-FLUX.1-dev-Non-Commercial`)" in licences
    assert f"- Text: {registry.get('flux1-dev').licence.url}" in licences
    assert "- Commercial use: not allowed" in licences and "Pack licence:" in licences
    assert "- Use: Non-commercial research" in licences and str(research_licence.pk) in licences
    assert "- Base model: FLUX.1 \\[dev\\] (`flux1-dev`, the flux family)" in dev and "LoRA on the transformer" in dev
    assert set(rendered(dev).tags) <= ALLOWED_TAGS  # no links or headings of other levels, as for user text

    sd35 = _card(services.launch_run(actor=staff, licence=commercial_licence, base_model_key="sd35-medium", **SHORT))
    assert "**Both licences allow commercial use: the LoRA and its outputs may be used commercially, for " in sd35
    assert "USD 1M in total annual revenue" in sd35 and "Stability AI Community License" in sd35
    assert "- Use: Commercial models" in sd35

    schnell = _card(services.launch_run(actor=staff, licence=research_licence, base_model_key="flux1-schnell", **SHORT))
    assert "**Non-commercial use only: the pack's licence is for Non-commercial research.**" in schnell
    assert "- Licence: Apache License 2.0 (`Apache-2.0`)" in schnell
    assert "- Text: https://www.apache.org/licenses/LICENSE-2.0" in schnell

    old = services.launch_run(actor=staff, licence=commercial_licence, base_model_key="sd15", **SHORT)
    TrainingRun.objects.filter(pk=old.pk).update(base_model_key="")  # a run launched before the registry
    old.refresh_from_db()
    card = _card(old)
    assert "The base model's licence is not on record" in card and "Base model licence" not in card
    assert "LoRA on the UNet" in card


def test_the_run_page_names_the_base_model_and_its_licence(research_licence, staff):
    run = services.launch_run(actor=staff, licence=research_licence, base_model_key="flux1-dev", **SHORT)
    page = staff_client(staff).get(reverse("training:detail", args=[run.pk])).content.decode()
    licence_line = page[page.index('id="run-base-licence"') :].split("</dd>")[0]
    assert "FLUX.1 [dev] Non-Commercial License" in licence_line and "commercial use not allowed" in licence_line
    assert "FLUX.1 [dev] · <code>black-forest-labs/FLUX.1-dev</code>" in page


def test_the_checkpoint_path_of_a_demo_model_is_its_built_folder(tiny_base, commercial_licence, staff):
    run = services.launch_run(actor=staff, licence=commercial_licence, base_model_key="demo", **SHORT)
    assert Path(run.base_model) == Path(tiny_base) and run.base_model_key == "demo"
    assert "Both licences allow commercial use" in _card(run)  # random weights: no licence restriction


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_demo_model_of_another_family_trains_through_its_registry_key(commercial_licence, staff, settings, tmp_path):
    """End to end on the tiny FLUX.1: the key offered once built, the run trained, its card naming the licence."""
    from django.core.files.storage import default_storage

    settings.TRAINING_DEMO_BASE_MODEL = tmp_path / "models" / "tiny-sd"
    assert "demo-flux" not in [entry.key for entry in base_models.available_base_models()]
    folder = demo_models.build_demo_model("flux")
    run = services.launch_run(
        actor=staff, licence=commercial_licence, base_model_key="demo-flux", max_steps=2, resolution=64,
        batch_size=1, validation_steps=2, checkpoint_every=2,
    )  # fmt: skip
    assert Path(run.base_model) == folder == tmp_path / "models" / "tiny-flux"
    assert services.execute_run(run.pk) == services.Outcome.SUCCEEDED
    run.refresh_from_db()
    card = default_storage.open(run.model_card_path).read().decode()
    assert "- Base model: Demo: tiny FLUX.1 (CPU) (`demo-flux`, the flux family)" in card
    assert "LoRA on the transformer" in card and "**Both licences allow commercial use" in card


# --- the memory estimate on the launch page --------------------------------------------------------------


def test_the_launch_page_estimates_peak_gpu_memory_and_a_preset_per_card(tiny_base, staff, carol, db):
    """Staff see what a run's settings will need before it starts: more pixels need more memory, gradient
    checkpointing less, and each card size gets settings that fit. Nobody else may ask."""
    url = reverse("training:memory")
    client = staff_client(staff)

    def peak(**values) -> float:
        answer = client.get(url, {"base_model_key": "demo", **values})
        assert answer.status_code == 200, answer.content
        state = answer.json()
        assert state["text"].startswith("about ") and [p["gpu_gb"] for p in state["presets"]] == [24, 48, 80]
        return state["peak_gb"]

    small, large = peak(resolution=64, batch_size=1), peak(resolution=1024, batch_size=8)
    assert large > small
    assert peak(resolution=1024, batch_size=8, gradient_checkpointing="on") < large
    # Bad input is a clear 400, not a 500.
    assert client.get(url, {"base_model_key": "nope"}).status_code == 400
    bad = client.get(url, {"base_model_key": "demo", "resolution": "huge"})
    assert bad.status_code == 400 and "resolution" in bad.json()["error"].lower()
    assert client.get(url, {"base_model_key": "demo", "resolution": "12"}).status_code == 400  # below 32
    # A hub model whose configs are not on this machine: no estimate, and it says why (nothing downloaded).
    unavailable = client.get(url, {"base_model_key": "flux1-dev"}).json()
    assert "not on this machine" in unavailable["unavailable"]
    # Staff only.
    for other in (Client(), staff_client(carol)):
        assert other.get(url, {"base_model_key": "demo"}).status_code in (302, 403)
