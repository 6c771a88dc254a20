"""Operations: health (no auth: load balancers probe it), Prometheus metrics and the API docs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from server.dependencies import ServerState, get_state, require_api_key

router = APIRouter()
guarded = APIRouter(dependencies=[Depends(require_api_key)])


@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD
@router.get("/health", summary="Readiness: 503 while the models load or the server shuts down, 200 when ready (no auth).")
async def health(state: ServerState = Depends(get_state)) -> JSONResponse:
    host = state.host
    if state.admission.draining:  # SIGTERM received: load balancers should stop sending requests here
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": str(state.settings.retry_after_seconds)})
    if host.handler is not None:
        return JSONResponse({"status": "ok"})
    if host.error:
        return JSONResponse({"status": "error", "error": host.error}, status_code=500)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": str(state.settings.retry_after_seconds)})


@guarded.get("/metrics", summary="Prometheus metrics.")
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


@guarded.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@guarded.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=request.app.title)


router.include_router(guarded)
