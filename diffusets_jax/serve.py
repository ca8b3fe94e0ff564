"""A local web page and JSON API for generating ECGs: `diffusets-jax serve`.

    diffusets-jax serve [--checkpoint DIR] [--host 127.0.0.1] [--port 8000] [--max-samples 16]

Open http://127.0.0.1:8000/ : type a report (statements separated by '|'), age, sex and heart rate,
and the page shows each generated ECG in the clinical layout of `generate`'s PNGs, its measured
heart rate next to the requested one, and download links for the WFDB record (.hea + .dat in a
zip), the PNG and `samples.npz`. A second tab puts two reports or two heart rates side by side.

JSON API (documented at /docs, served offline):
    GET  /api/health          {"status": "warming up" | "ready" | "failed", ...}
    GET  /api/model           the model card summary: config name, sampler defaults, MODEL_CARD.md
    POST /api/generate        report, age, sex, heart_rate (+ num_samples, seed, sampler, ...)
    GET  /api/files/RUN/NAME  the files of one generation (ecg_000.png, ecg_000.zip, samples.npz)

The routes call `diffusets_jax.service.ECGService`, which loads and compiles one model at start-up
(until then /api/health and the page say "warming up" and /api/generate answers 503), serves one
request at a time, checks inputs with the library's own validation (a bad value gets the command
line's message as a 4xx `{"detail": message}`) and keeps the files of the last generations in a
temporary directory, removed when the server stops; see that module for the details. This module
holds the app (`create_app`: routes, error handlers, body limit, OpenAPI schemas) and `serve`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from diffusets_jax.service import DEFAULT_MAX_SAMPLES, WARMUP_SIZES, ECGService, ServeError

log = logging.getLogger("diffusets_jax.serve")

#: The page: index.html, app.js, style.css (package data).
WEB_DIR = Path(__file__).parent / "web"
#: Largest request body accepted (a report is at most `pipeline.MAX_REPORT_CHARS` characters).
MAX_BODY_BYTES = 1 << 20
_MEDIA_TYPES = {".png": "image/png", ".zip": "application/zip", ".npz": "application/octet-stream"}


# ----------------------------------------------------------------------------------------------
# Request and response schemas (for the OpenAPI page; the body is parsed by
# `service.parse_request`, so that a bad value gets the library's message rather than a schema error)
# ----------------------------------------------------------------------------------------------


class GenerateRequest(BaseModel):
    """What to generate. Numbers may also be given as strings ("63"), as an HTML form sends them."""

    report: str = Field(
        description="report statements separated by '|', most important first",
        examples=["Sinus tachycardia|Left ventricular hypertrophy"],
    )
    age: float = Field(description="age in years, 0-120", examples=[63])
    sex: str = Field(description="M or F (or male / female)", examples=["M"])
    heart_rate: float = Field(description="heart rate in bpm, 20-300 (also accepted as `hr`)", examples=[110])
    num_samples: int = Field(1, description="number of ECGs, 1 to the server's --max-samples")
    seed: int = Field(0, description="random seed: the same seed and options give the same ECGs")
    sampler: str | None = Field(None, description="ddpm, ddim or dpm-solver++ (default: the model's)")
    num_steps: int | None = Field(None, description="sampler steps, 1-1000 (default: the model's)")
    guidance_scale: float | None = Field(None, description="classifier-free guidance, 1 = none (default: the model's)")
    eta: float | None = Field(None, description="DDIM noise, 0-1 (default: the model's)")
    exact_limb_leads: bool | None = Field(None, description="derive III, aVR, aVL, aVF from I and II")
    return_signals: bool = Field(False, description="also return the signals, (num_samples, 1024, 12) mV")


class GeneratedECG(BaseModel):
    index: int
    record: str = Field(description="WFDB record name inside the zip")
    requested_heart_rate: float
    measured_heart_rate: float | None = Field(description="XQRS heart rate of the generated ECG; null if none found")
    png: str = Field(description="URL of the PNG in the clinical layout")
    wfdb_zip: str = Field(description="URL of a zip with the WFDB record (.hea + .dat)")


class GenerateResponse(BaseModel):
    id: str
    report: str
    prompt: str
    age: float
    sex: str
    heart_rate: float
    num_samples: int
    seed: int
    sampler: str
    num_steps: int
    guidance_scale: float
    eta: float
    exact_limb_leads: bool
    fs: float
    leads: list[str]
    npz: str = Field(description="URL of samples.npz with all signals and conditions")
    ecgs: list[GeneratedECG]
    seconds: dict[str, float] = Field(description="time waiting for the model, generating, writing files, total")
    warnings: list[str]
    signals: list | None = Field(None, description="(num_samples, 1024, 12) mV when return_signals was true")


class ErrorBody(BaseModel):
    detail: str = Field(description='what is wrong, e.g. "age must be a number in [0, 120], got 130.0"')


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def create_app(
    checkpoint: str | Path | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    warmup_sizes=WARMUP_SIZES,
    warmup_options: dict | None = None,
) -> FastAPI:
    """The FastAPI app; the model loads when the app starts (its lifespan), files go when it stops.

    Args:
        checkpoint: pretrained model directory (None: the shipped default model).
        max_samples: most ECGs one request may ask for.
        warmup_sizes, warmup_options: ECG counts and `Pipeline.sampling` arguments compiled at
            start-up (default: 1 and 2 ECGs with the model's default sampling).
    Raises:
        FileNotFoundError if `checkpoint` is not a model directory; ConfigError (a ValueError) if its
        config.json does not fit (`pretrained.read_model_config`); ValueError for a bad max_samples.
    """
    from fastapi_offline import FastAPIOffline

    from diffusets_jax import __version__

    service = ECGService(checkpoint, max_samples, warmup_sizes, warmup_options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPIOffline(
        title="diffusets-jax",
        version=__version__,
        lifespan=lifespan,
        description="12-lead ECGs from report text, age, sex and heart rate (DiffuSETS in JAX). "
        'The page is at /; errors are `{"detail": message}` with a 4xx or 503 status.',
    )
    app.state.service = service
    errors = {
        422: {"model": ErrorBody, "description": "a bad value, with the same message as the CLI"},
        503: {"model": ErrorBody, "description": "warming up, or too many requests waiting"},
    }

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse(
                {"detail": f"request body too large: {int(length)} bytes, at most {MAX_BODY_BYTES}"}, status_code=413
            )
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/api/health", summary="Whether the model is ready", tags=["api"])
    async def health():
        """`status` is "warming up" while the model loads and compiles, then "ready" (or "failed",
        with the reason in `message`, and HTTP 500)."""
        return JSONResponse(service.health(), status_code=500 if service.error else 200)

    @app.get("/api/model", summary="Model card summary", tags=["api"])
    async def model():
        """Config name, sampling defaults, limits of each input and the first lines of MODEL_CARD.md."""
        return service.model_info()

    @app.post(
        "/api/generate",
        summary="Generate ECGs",
        tags=["api"],
        response_model=GenerateResponse,
        responses={
            400: {"model": ErrorBody, "description": "not a JSON object"},
            413: {"model": ErrorBody, "description": "body over 1 MiB"},
            **errors,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
            }
        },
    )
    async def generate(request: Request):
        """Generate `num_samples` ECGs for one report and patient, one request at a time.

        Returns links to each ECG's PNG and WFDB zip, the measured heart rates, `samples.npz` and,
        with `return_signals`, the signals. Bad input: 422 with the message `diffusets-jax generate`
        prints for it (e.g. `sex must be 'M' or 'F' (or male/female), got 'X'`)."""
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ServeError(413, f"request body too large: {len(body)} bytes, at most {MAX_BODY_BYTES}")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        return await run_in_threadpool(service.generate, payload)

    @app.get(
        "/api/files/{run_id}/{name}",
        summary="A generated file",
        tags=["api"],
        responses={200: {"content": {"image/png": {}, "application/zip": {}}}, 404: {"model": ErrorBody}},
    )
    async def files(run_id: str, name: str):
        """`ecg_000.png`, `ecg_000.zip` (WFDB `ecg_000.hea` + `.dat`) or `samples.npz` of one generation."""
        path = service.file(run_id, name)
        download = None if path.suffix == ".png" else f"diffusets_{run_id[:8]}_{name}"
        return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], filename=download)

    return app


def serve(
    checkpoint: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> None:
    """Run the server until interrupted (Ctrl-C); ValueError / FileNotFoundError for bad arguments."""
    import uvicorn

    from diffusets_jax import compile_cache

    if not 0 < port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {port}")
    compile_cache.ensure_enabled()  # warm-up loads the compiled samplers from disk after the first start
    app = create_app(checkpoint, max_samples)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    shown = f"[{host}]" if ":" in host else host
    print(
        f"diffusets-jax serve: http://{shown}:{port}/ (model {app.state.service.checkpoint}; "
        "warming up in the background, API docs at /docs)",
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {host}: anyone who can reach this address can use the server "
            "(it has no authentication)",
            flush=True,
        )
    uvicorn.run(app, host=host, port=port, log_level="info")
