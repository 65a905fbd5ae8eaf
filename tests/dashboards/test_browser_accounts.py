"""Accounts in Chromium: logout ends the session on the server, 30 parallel wrong logins get 429 after
the limit while the real user's browser still logs in, an admin disables a user from the users page,
and /docs renders with the network off."""

from __future__ import annotations

import re

import pytest

from tests.dashboards.browsing import logged_in, screenshot
from tests.dashboards.seed import PASSWORD

pytestmark = pytest.mark.browser

PARALLEL_LOGINS = """async ([name, count]) => {
  const one = (n) => fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({name, password: "guess " + n})}).then(r => r.status);
  return Promise.all([...Array(count).keys()].map(one));
}"""


def test_logout_ends_the_session_even_for_a_saved_cookie(browser, server):
    base, _, _ = server
    page = logged_in(browser, base, "cur1", "/d/portraits")
    saved = page.context.cookies()
    page.click("text=Log out")
    page.wait_for_url(re.compile(r".*/login$"))
    replay = browser.new_context()
    replay.add_cookies(saved)  # the cookie as it was before logging out
    response = replay.request.get(base + "/api/me")
    assert response.status == 401
    replay.close()


def test_parallel_wrong_logins_get_429_after_the_limit_and_the_real_user_still_logs_in(browser, server):
    base, _, _ = server
    real = logged_in(browser, base, "cur1", "/d/portraits")  # the real user's browser (device cookie)
    real.click("text=Log out")
    real.wait_for_url(re.compile(r".*/login$"))
    attacker = browser.new_context().new_page()
    attacker.goto(base + "/login")
    codes = attacker.evaluate(PARALLEL_LOGINS, ["cur1", 30])
    assert sorted(codes) == [401] * 5 + [429] * 25, codes
    attacker.fill('input[name="name"]', "cur1")
    attacker.fill('input[name="password"]', PASSWORD)
    attacker.click('button[type="submit"]')
    attacker.wait_for_selector("#login-error")
    assert "too many failed logins" in attacker.locator("#login-error").inner_text()
    screenshot(attacker, "login-throttled")
    real.fill('input[name="name"]', "cur1")  # the real user, on the browser that logged in before
    real.fill('input[name="password"]', PASSWORD)
    real.click('button[type="submit"]')
    real.wait_for_url(re.compile(rf"{re.escape(base)}/$"))
    assert "cur1" in real.locator(".who").inner_text()


def test_admin_disables_a_user_on_the_users_page(browser, server):
    base, _, _ = server
    victim = logged_in(browser, base, "cur2", "/d/portraits")
    admin = logged_in(browser, base, "boss", "/admin/users")
    screenshot(admin, "admin-users")
    admin.once("dialog", lambda dialog: dialog.accept())
    admin.click('tr[data-name="cur2"] .user-toggle')
    admin.wait_for_selector('tr[data-name="cur2"].disabled')
    victim.reload()
    victim.wait_for_url(re.compile(r".*/login\?next=.*"))
    admin.select_option('tr[data-name="cur1"] .user-role', "viewer")
    admin.wait_for_function("() => document.getElementById('flash').textContent.includes('cur1 is now a viewer')")


def test_api_docs_render_with_the_network_off(browser, server):
    base, _, _ = server
    page = logged_in(browser, base, "viewer", "/")
    outside = []

    def only_local(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_local)
    page.goto(base + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-tag", timeout=30000)
    assert page.locator(".swagger-ui .opblock").count() > 20
    screenshot(page, "api-docs-offline")
    page.goto(base + "/redoc")
    page.wait_for_selector("text=Log in; the reply carries the CSRF token", timeout=30000)
    assert outside == []
