"""Property-based API test: schemathesis generates requests from the app's own OpenAPI schema
(valid and invalid ones) and no answer may be a 5xx. Bounded: 25 examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from service_helpers import MODEL_A_DIR, model_a
from service_helpers import settings as app_settings

from service.app import create_app

# The schema does not depend on the model, so it is read without starting the app; schemathesis
# starts the app's lifespan (loading the model) on the first generated request.
app = create_app(app_settings(MODEL_A_DIR, api_key="schemathesis-key", max_items_per_request=100))
schema = schemathesis.openapi.from_dict(app.openapi())
schema.app = app


@pytest.fixture(scope="module", autouse=True)
def trained_model():
    model_a()
    yield
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # the app's lifespan shutdown


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_causes_a_server_error(case):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code < 300 and "json" in response.headers.get("content-type", ""):
        case.validate_response(response, checks=[response_schema_conformance])
