"""Configuration comes from the environment only; production settings pass Django's deploy check."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args, env_overrides, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL")}
    env.update({"VAR_DIR": str(tmp_path / "var"), **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x7#k2!pq9@zr4$w8&v6^m3*n5(b1)c0_d-e=f+g~h`j{l}o|s;t:u<y>a?i",
    "ALLOWED_HOSTS": "market.example.com",
    "DATABASE_URL": "postgres://market:secret@db.example.com:5432/market",
    "CELERY_BROKER_URL": "redis://redis.example.com:6379/0",
    "CACHE_URL": "redis://redis.example.com:6379/1",
    "MEDIA_S3_BUCKET": "market-media",
    "PAYMENTS_MODE": "stripe",
    "STRIPE_SECRET_KEY": "sk_live_example",
    "STRIPE_PUBLISHABLE_KEY": "pk_live_example",
    "STRIPE_WEBHOOK_SECRET": "whsec_example",
}


def test_production_settings_pass_the_deploy_check_with_no_warnings(tmp_path):
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=PRODUCTION, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}
    result = run_manage("check", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is false" in result.stderr


def test_production_talks_to_stripe_and_refuses_to_start_without_its_keys(tmp_path):
    script = "from django.conf import settings as s; print(repr(s.STRIPE_API_BASE), s.STRIPE_JS_URL)"
    result = run_manage("shell", "-v", "0", "-c", script, env_overrides=PRODUCTION, tmp_path=tmp_path)
    assert result.stdout.split() == ["''", "https://js.stripe.com/v3/"], result.stderr  # api.stripe.com
    for key in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "STRIPE_WEBHOOK_SECRET"):
        result = run_manage("check", env_overrides={**PRODUCTION, key: ""}, tmp_path=tmp_path)
        assert result.returncode != 0 and f"PAYMENTS_MODE=stripe needs {key}" in result.stderr, result.stderr


def test_payments_mode_is_never_inferred_in_production(tmp_path):
    """Keys or no keys, a site with DEBUG off must say whether it takes real money."""
    for overrides in ({}, {k: "" for k in PRODUCTION if k.startswith("STRIPE_")}):
        env = {**{k: v for k, v in PRODUCTION.items() if k != "PAYMENTS_MODE"}, **overrides}
        result = run_manage("check", env_overrides=env, tmp_path=tmp_path)
        assert result.returncode != 0 and "PAYMENTS_MODE must be set when DEBUG is false" in result.stderr


def test_the_fake_stripe_is_an_explicit_choice_and_refuses_live_keys(tmp_path):
    staging = {**PRODUCTION, "PAYMENTS_MODE": "fake", "LOCALSTRIPE_URL": "http://stripe.staging.internal:8420/"}
    for key in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "STRIPE_WEBHOOK_SECRET"):
        staging.pop(key)
    script = "from django.conf import settings as s; print(s.PAYMENTS_MODE, s.STRIPE_API_BASE, s.STRIPE_JS_URL)"
    result = run_manage("shell", "-v", "0", "-c", script, env_overrides=staging, tmp_path=tmp_path)
    assert result.stdout.split() == [
        "fake",
        "http://stripe.staging.internal:8420",
        "http://stripe.staging.internal:8420/js.stripe.com/v3/",
    ], result.stderr
    live = {**staging, "STRIPE_SECRET_KEY": "sk_live_example"}
    result = run_manage("check", env_overrides=live, tmp_path=tmp_path)
    assert result.returncode != 0 and "PAYMENTS_MODE=fake was given a live STRIPE_SECRET_KEY" in result.stderr
    result = run_manage("check", env_overrides={"PAYMENTS_MODE": "paypal"}, tmp_path=tmp_path)
    assert result.returncode != 0 and "PAYMENTS_MODE must be one of fake, stripe, not 'paypal'" in result.stderr


def test_importing_the_settings_writes_nothing(tmp_path):
    """A build step, a test or a production image that reads the settings leaves the disk as it was."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL")}
    env.update({"VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "marketplace.settings"})
    script = "import django; django.setup(); from django.conf import settings; print(len(settings.SECRET_KEY))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and int(result.stdout) >= 50, result.stderr
    assert not (tmp_path / "var").exists()


def test_production_entry_points_make_no_local_folders(tmp_path):
    result = run_manage("check", "--deploy", env_overrides=PRODUCTION, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var").exists()


def test_a_bad_boolean_is_reported_by_name(tmp_path):
    result = run_manage("check", env_overrides={"DEBUG": "perhaps"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DEBUG must be true or false, not 'perhaps'" in result.stderr


def test_the_embedded_default_needs_no_configuration(tmp_path):
    script = (
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME']);"
        "print(s.CELERY_BROKER_URL, s.STORAGES['default']['OPTIONS']['location'])"
    )
    result = run_manage("shell", "-v", "0", "-c", script, env_overrides={}, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    var = tmp_path / "var"
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        str(var / "db.sqlite3"),
        "filesystem://localhost//",
        str(var / "media"),
    ]
    # manage.py made the embedded set-up's files: one secret key, readable by its owner only, and kept.
    key_file = var / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and (var / "celery" / "queue").is_dir()
    key = key_file.read_text()
    assert run_manage("check", env_overrides={}, tmp_path=tmp_path).returncode == 0
    assert key_file.read_text() == key


def test_a_worker_started_on_its_own_prepares_the_embedded_set_up(tmp_path):
    """`celery -A marketplace worker` on a fresh machine finds the broker's folders and the shared key."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL")}
    env["VAR_DIR"] = str(tmp_path / "var")
    celery = Path(sys.executable).parent / "celery"
    result = subprocess.run(
        [str(celery), "-A", "marketplace", "report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    var = tmp_path / "var"
    assert (var / "celery" / "queue").is_dir() and (var / "celery" / "control").is_dir()
    assert (var / "secret_key").stat().st_mode & 0o777 == 0o600


def test_production_settings_use_postgres_redis_and_s3(tmp_path):
    script = (
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.STORAGES['default']['BACKEND'],"
        " s.CACHES['default']['BACKEND'], s.DATABASES['default']['OPTIONS']['connect_timeout'])"
    )
    result = run_manage("shell", "-v", "0", "-c", script, env_overrides=PRODUCTION, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "redis://redis.example.com:6379/0",
        "storages.backends.s3.S3Storage",
        "django.core.cache.backends.redis.RedisCache",
        "5",  # an unanswering database fails a connection in seconds, never hangs a probe or a request
    ]


def test_each_kind_of_work_goes_to_its_own_queue():
    """Workers are sized and placed per queue (the GPU machines take `training`), so routes must hold."""
    from marketplace import celery_app

    def queue_of(task_name):
        return celery_app.amqp.router.route({}, task_name)["queue"].name

    assert queue_of("marketplace.catalog.tasks.prepare_asset") == "celery"
    assert queue_of("marketplace.curation.tasks.analyse_pending") == "curation"
    assert queue_of("marketplace.packs.tasks.build_export") == "exports"
    assert queue_of("training.tasks.run_training") == "training"
    assert queue_of("training.tasks.requeue_stale_runs") == "celery"
    # A worker started without -Q takes every queue (the one-machine set-up).
    assert sorted(celery_app.amqp.queues) == ["celery", "curation", "exports", "training"]
