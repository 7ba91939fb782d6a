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
