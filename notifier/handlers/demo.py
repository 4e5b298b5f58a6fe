"""The embeddable form's script (always) and, in dev mode, demo pages that embed it."""

from __future__ import annotations

from importlib import resources as pkg

from aiohttp import web

from notifier.handlers.middleware import res

FORM_JS = pkg.files("notifier").joinpath("static/notifier-form.js").read_bytes()
FAVICON = pkg.files("notifier").joinpath("static/favicon.svg").read_bytes()

DEMO_STUDY = {
    "nct_id": "NCT05879978",
    "title": "A Study to Test How Well Different Doses of BI 764532 in Combination With "
    "Ezabenlimab Are Tolerated by People With Small Cell Lung Cancer and Other "
    "Neuroendocrine Tumours That Are Positive for DLL3",
    "status": "Recruiting",
    "sponsor": "Boehringer Ingelheim",
    "conditions": ["Small Cell Lung Carcinoma (SCLC)", "Neuroendocrine Neoplasms"],
}

_DEMO = {
    "get": {
        "summary": "Dev mode only: a page embedding the signup form",
        "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
    }
}
OPENAPI_PATHS = {
    "/static/notifier-form.js": {
        "get": {
            "summary": "The optional script that submits the embeddable form with fetch()",
            "responses": {
                "200": {"description": "JavaScript", "content": {"application/javascript": {}}}
            },
        }
    },
    "/favicon.ico": {
        "get": {
            "summary": "The pages' icon (SVG)",
            "responses": {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}},
        }
    },
    "/demo/study": _DEMO,
    "/demo/condition": _DEMO,
    "/demo/site": _DEMO,
}
# Served (and documented) in dev mode only: the production spec does not list them.
DEV_ONLY_PATHS = frozenset({"/demo/site", "/demo/study", "/demo/condition"})


async def favicon(request: web.Request) -> web.Response:
    """Browsers ask for /favicon.ico on every page: an icon, rather than a 404 each time."""
    return web.Response(
        body=FAVICON,
        content_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )


async def form_script(request: web.Request) -> web.Response:
    return web.Response(
        body=FORM_JS,
        content_type="application/javascript",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )


def _demo(request: web.Request, kind: str) -> web.Response:
    r = res(request)
    if r.settings.is_production:
        raise web.HTTPNotFound()
    body = r.templates.get_template(f"pages/demo{'_site' if kind == 'site' else ''}.html").render(
        kind=kind,
        study=DEMO_STUDY,
        condition="Neuroendocrine Tumors",
        # The site decides whether "and new studies for its condition" starts ticked.
        condition_checked=request.query.get("condition") != "unticked",
        action="/v1/subscriptions",  # same origin as the demo page
        script="/static/notifier-form.js",
    )
    response = web.Response(text=body, content_type="text/html")
    # The demo page is the website's side: it may run our script (the API pages may not).
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


async def demo_study(request: web.Request) -> web.Response:
    return _demo(request, "study")


async def demo_condition(request: web.Request) -> web.Response:
    return _demo(request, "condition")


async def demo_site(request: web.Request) -> web.Response:
    """The mock website's home: where "back to the site" and "sign up again" land in dev."""
    return _demo(request, "site")
