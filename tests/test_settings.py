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
    no_keys = {k: v for k, v in PRODUCTION.items() if not k.startswith("STRIPE_")}
    result = run_manage("check", env_overrides=no_keys, tmp_path=tmp_path)
    assert (
        result.returncode != 0
        and "STRIPE_SECRET_KEY, STRIPE_PUBLISHABLE_KEY and STRIPE_WEBHOOK_SECRET" in result.stderr
    )
    no_webhook_secret = {k: v for k, v in PRODUCTION.items() if k != "STRIPE_WEBHOOK_SECRET"}
    result = run_manage("check", env_overrides=no_webhook_secret, tmp_path=tmp_path)
    assert result.returncode != 0 and "STRIPE_WEBHOOK_SECRET must be set" in result.stderr


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
    assert (var / "secret_key").exists() and (var / "celery" / "queue").is_dir()


def test_production_settings_use_postgres_redis_and_s3(tmp_path):
    script = (
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.STORAGES['default']['BACKEND'],"
        " s.CACHES['default']['BACKEND'])"
    )
    result = run_manage("shell", "-v", "0", "-c", script, env_overrides=PRODUCTION, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "redis://redis.example.com:6379/0",
        "storages.backends.s3.S3Storage",
        "django.core.cache.backends.redis.RedisCache",
    ]
