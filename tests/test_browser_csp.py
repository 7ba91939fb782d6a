"""The Content-Security-Policy in a real browser: the pages work within it, and it stops injected code.

Every browser test fails when Chromium reports a CSP violation (the `page` fixture in test_browser.py); these
tests reach the pages the others do not, and show that the policy is enforced, not only sent."""

import pytest

from tests.test_browser import browser, expect, log_in, page, server  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


def test_the_api_docs_work_under_the_policy(server, page, expect):
    page.goto(f"{server.url}/api/docs/")
    # Swagger UI (inline start-up script with the nonce) fetched the schema and drew the operations
    expect(page.locator(".opblock-summary-path", has_text="/api/assets/").first).to_be_visible()
    assert not page.js_errors


def test_injected_inline_code_does_not_run(server, page, expect, alice):
    log_in(page, server, expect, next_path="/my/uploads/")
    ran = page.evaluate(
        """() => new Promise((resolve) => {
            window.injected = false;
            document.addEventListener("securitypolicyviolation", () => resolve(window.injected), {once: true});
            setTimeout(() => resolve(window.injected), 5000);  // not blocked: no violation is reported
            const script = document.createElement("script");  // what a stored XSS would add: no nonce
            script.textContent = "window.injected = true";
            document.body.append(script);
        })"""
    )
    assert ran is False
    handler = page.evaluate(
        """() => new Promise((resolve) => {
            window.clicked = false;
            document.addEventListener("securitypolicyviolation", (e) => resolve([e.violatedDirective, window.clicked]),
                                      {once: true});
            setTimeout(() => resolve([null, window.clicked]), 5000);
            const div = document.createElement("div");
            div.innerHTML = '<img src="data:," onerror="window.clicked = true">';
            document.body.append(div);
        })"""
    )
    assert handler == ["script-src-attr", False]
    assert any("Content Security Policy" in text for text in page.csp_violations)
    page.csp_violations.clear()  # provoked on purpose
