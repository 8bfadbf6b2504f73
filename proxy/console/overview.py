"""The overview page (the first request: base URL, model IDs per plan, quickstarts, a mark
once the first request arrived) and the short-form redirects to the current workspace.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.console.access import Page, on_workspace, signed_in
from proxy.console.billing_page import billing_summary
from proxy.console.render import redirect, render
from proxy.console.sessions import Visitor, console_config
from proxy.runtime import Runtime
from proxy.store.rows import Workspace
from proxy.types import Lane

SHORT_FORMS = ("keys", "byok", "usage", "billing", "members")


def api_base(request: web.Request) -> str:
    public = console_config(request).public_url
    return f"{public or f'{request.scheme}://{request.host}'}/v1"


async def model_ids(request: web.Request, workspace: Workspace) -> dict[str, list[str]]:
    """This workspace's model IDs per plan, as /v1/models lists them."""
    runtime: Runtime = request.config_dict[appkeys.STATE].runtime
    plans: dict[str, list[str]] = {
        Lane.CHEAP: [f"{Lane.CHEAP}/{m}" for m in runtime.lanes.cheap.pool.models()],
        Lane.RESALE: [f"{Lane.RESALE}/{m}" for m in sorted(runtime.config.resale_models)],
        Lane.BYOK: [],
    }
    if workspace.byok_enabled:
        stored = set(await request.config_dict[appkeys.STORE].list_byok_providers(workspace.id))
        for name, provider in sorted(runtime.config.byok_providers.items()):
            if name in stored:
                plans[Lane.BYOK] += [f"{Lane.BYOK}/{name}/{m}" for m in provider.models]
    return plans


@on_workspace
async def overview(request: web.Request, page: Page) -> web.StreamResponse:
    store = request.config_dict[appkeys.STORE]
    plans = await model_ids(request, page.workspace)
    first_model = next((ids[0] for ids in plans.values() if ids), "cheap/gpt-5.4")
    context = page.context(
        "overview",
        base_url=api_base(request),
        plans=plans,
        first_model=first_model,
        first_request_at=await store.console.first_request_at(page.workspace.id),
        has_keys=bool(await store.list_api_keys(page.workspace.name)),
        billing=await billing_summary(request, page.workspace),
    )
    return render(request, "overview.html", context, visitor=page.visitor)


async def _current(request: web.Request, visitor: Visitor) -> str | None:
    memberships = await request.config_dict[appkeys.STORE].accounts.memberships(visitor.user.id)
    current = next((m for m in memberships if m.workspace_id == visitor.user.current_workspace_id), None)
    chosen = current or (memberships[0] if memberships else None)
    return None if chosen is None else chosen.workspace


@signed_in
async def home(request: web.Request, visitor: Visitor) -> web.StreamResponse:
    workspace = await _current(request, visitor)
    if workspace is None:
        return render(request, "no_workspace.html", {"page": ""}, visitor=visitor)
    return redirect(f"/console/w/{workspace}/")


@signed_in
async def short_form(request: web.Request, visitor: Visitor) -> web.StreamResponse:
    workspace = await _current(request, visitor)
    if workspace is None:
        return redirect("/console/")
    page = request.match_info["page"]
    query = f"?{request.query_string}" if request.query_string else ""
    return redirect(f"/console/w/{workspace}/{page}{query}")
