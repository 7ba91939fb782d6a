"""Property-based fuzzing of the whole REST API from its own OpenAPI schema (schemathesis, in-process, no network).

Every operation the schema lists is called with generated requests (valid ones, ones aimed at real objects,
and invalid ones) as a staff member, a creator and a buyer holding a licence, each with a DRF token. Each
response must be no server error and must match what the schema declares: its status code, content type,
headers and body. Generation is derandomized, so a run is the same run every time."""

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from marketplace.wsgi import application
from tests.marketplace_world import build_world, make_licensee

SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
OPERATIONS = sorted((result.ok() for result in SCHEMA.get_all_operations()), key=lambda op: op.label)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES_PER_OPERATION = 25  # per user and operation: about a minute in all on 2 cores


@pytest.fixture
def world(alice, bob, staff, make_eligible_asset, django_capture_on_commit_callbacks):
    return build_world(
        alice=alice,
        bob=bob,
        staff=staff,
        licensee=make_licensee(),
        make_eligible_asset=make_eligible_asset,
        capture_on_commit=django_capture_on_commit_callbacks,
    )


@pytest.fixture
def in_test_transaction():
    """The WSGI app closes the database connection after each request, as a server should; inside a test that
    would close the test's transaction, so (like Django's test client) keep the connection for the test."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def real_ids(world, path: str) -> dict:
    """Path parameters that name an object that exists, so generated bodies reach the code behind the lookup."""
    if path.startswith("/api/assets/{id}"):
        return {"id": world.spare.pk}
    if path.startswith("/api/pack-licences/{id}"):
        return {"id": str(world.licence.pk)}
    if path.startswith("/api/training-runs/{id}"):
        return {"id": world.run.pk}
    return {}


def test_the_schema_lists_every_api_operation():
    assert {op.label for op in OPERATIONS} >= {
        "POST /api/auth/token/",
        "GET /api/assets/",
        "POST /api/assets/",
        "PATCH /api/assets/{id}/",
        "POST /api/assets/bulk/",
        "POST /api/assets/{id}/takedown/",
        "POST /api/assets/{id}/reinstate/",
        "GET /api/pack-licences/{id}/downloads/",
        "POST /api/training-runs/",
        "POST /api/training-runs/{id}/cancel/",
    }


@pytest.mark.parametrize("who", ["staff", "alice", "buyer"])
def test_every_operation_answers_as_its_schema_says(who, world, request, in_test_transaction):
    user = world.licensee if who == "buyer" else request.getfixturevalue(who)
    headers = {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    failures = []
    for operation in OPERATIONS:
        fixed = real_ids(world, operation.path)
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE, headers=headers),
            operation.as_strategy(GenerationMode.NEGATIVE, headers=headers),
        ]
        if fixed:
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, headers=headers, path_parameters=fixed))

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def call(case):
            case.call_and_validate(checks=CHECKS)

        try:
            call()
        except (Exception, BaseExceptionGroup) as error:  # every operation's failures are reported, not the first only
            failures.append(f"{operation.label} as {who}:\n{error}")
    assert not failures, "\n\n".join(failures)
