"""The embeddable form's script (always) and, in dev mode, demo pages that embed it."""

from __future__ import annotations

from importlib import resources as pkg

from aiohttp import web

from notifier.handlers.middleware import res

FORM_JS = pkg.files("notifier").joinpath("static/notifier-form.js").read_bytes()

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
    "/demo/study": _DEMO,
    "/demo/condition": _DEMO,
}
# Served (and documented) in dev mode only: the production spec does not list them.
DEV_ONLY_PATHS = frozenset({"/demo/study", "/demo/condition"})


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
    body = r.templates.get_template("pages/demo.html").render(
        kind=kind,
        study=DEMO_STUDY,
        condition="Neuroendocrine Tumors",
        action="/v1/subscriptions",  # same origin as the demo page
        script="/static/notifier-form.js",
    )
    response = web.Response(text=body, content_type="text/html")
    # The demo page is the website's side: it may run our script (the API pages may not).
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


async def demo_study(request: web.Request) -> web.Response:
    return _demo(request, "study")


async def demo_condition(request: web.Request) -> web.Response:
    return _demo(request, "condition")
