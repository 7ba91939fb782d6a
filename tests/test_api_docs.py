def test_openapi_schema_describes_the_asset_api(client, db):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert "/api/assets/" in schema["paths"] and "post" in schema["paths"]["/api/assets/"]
    assert "/api/assets/{id}/withdraw/" in schema["paths"]
    upload = schema["paths"]["/api/assets/"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert "/api/pack-licences/{id}/downloads/" in schema["paths"]  # buyers' scripts
    assert "post" in schema["paths"]["/api/training-runs/"] and "/api/training-runs/{id}/cancel/" in schema["paths"]


def test_api_docs_work_offline(client, db):
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn." not in page and "unpkg" not in page  # every asset is served by us
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200


def test_licences_are_public_with_their_terms(client, db):
    page = client.get("/licences/").content.decode()
    assert "Marketplace AI Training Licence, Commercial 1.0" in page
    assert "may not be redistributed" in page
    api = client.get("/api/licences/").json()
    assert {"code": "all-rights-reserved", "allows_ai_training": False}.items() <= next(
        item for item in api if item["code"] == "all-rights-reserved"
    ).items()


def test_the_schema_tells_the_truth_about_uploads_errors_and_lists(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    assert list(paths["/api/assets/"]["post"]["requestBody"]["content"]) == ["multipart/form-data"]  # a file
    # An image may have no licence yet: "" is a value the API returns.
    asset_licence = components["Asset"]["properties"]["licence"]
    assert {"$ref": "#/components/schemas/BlankEnum"} in asset_licence["oneOf"]
    # The one error shape, on every error each operation can give.
    error = {"$ref": "#/components/schemas/Error"}
    for path, codes in {
        ("/api/assets/{id}/", "patch"): {"400", "401", "403", "404"},
        ("/api/assets/", "get"): {"401", "404"},
        ("/api/pack-licences/{id}/downloads/", "get"): {"401", "403", "404"},
        ("/api/auth/token/", "post"): {"400", "429"},
    }.items():
        responses = paths[path[0]][path[1]]["responses"]
        assert codes <= set(responses), path
        assert all(responses[code]["content"]["application/json"]["schema"] == error for code in codes), path
    # These answer a plain list, not a page of results.
    assert (
        paths["/api/assets/bulk/"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["type"]
        == "array"
    )
    downloads = paths["/api/pack-licences/{id}/downloads/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert downloads["schema"]["type"] == "array"
    # Launching a run needs a licence, and a preset or a base model's registry key.
    launch = components["LaunchRequest"]
    assert launch["required"] == ["licence"]
    assert launch["anyOf"] == [{"required": ["preset"]}, {"required": ["base_model_key"]}]


def test_api_errors_django_answers_itself_are_json_too(client, db):
    response = client.get("/api/assets/1.5/withdraw/")  # no such URL
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    assert "<html" in client.get("/no-such-page/").content.decode().lower()  # pages stay pages
