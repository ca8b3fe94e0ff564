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

Behaviour:
* One model in memory, loaded and compiled at start-up in a background thread; until it is ready
  /api/health and the page say "warming up" and /api/generate answers 503.
* Requests are served one model call at a time (a lock); at most `MAX_QUEUE` wait, more get 503.
* Inputs are checked by the library's own validation (`Sampling.from_config`, `validate_conditions`),
  once per request, so a bad value gets the same message as on the command line, as a 4xx
  `{"detail": message}`; the checked `Sampling` is what the pipeline runs.
  `--max-samples` caps ECGs per request. ECG counts are rounded up to a power of two for the
  compiled sampler (ECG j comes from its own key, so the first n of a batch are the n asked for)
  and the padding is dropped: at most log2(batch size) + 1 compilations per sampling setting.
* Generated files go to one temporary directory, removed when the server stops; the last
  `KEEP_RUNS` generations are kept. Nothing is written anywhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

log = logging.getLogger("diffusets_jax.serve")

#: The page: index.html, app.js, style.css (package data).
WEB_DIR = Path(__file__).parent / "web"
DEFAULT_MAX_SAMPLES = 16
#: Largest request body accepted (a report is at most `pipeline.MAX_REPORT_CHARS` characters).
MAX_BODY_BYTES = 1 << 20
#: Requests allowed to wait for the model at once; more are refused with 503.
MAX_QUEUE = 32
#: Generations whose files are kept (older ones are deleted).
KEEP_RUNS = 64
#: ECG counts compiled at start-up with the model's default sampling: the page's default and one.
WARMUP_SIZES = (1, 2)
#: Lines of MODEL_CARD.md returned by /api/model.
MODEL_CARD_LINES = 12

REQUIRED = ("report", "age", "sex", "heart_rate")
OPTIONAL = (
    "num_samples",
    "seed",
    "sampler",
    "num_steps",
    "guidance_scale",
    "eta",
    "exact_limb_leads",
    "return_signals",
)
_RUN_ID = re.compile(r"[0-9a-f]{16}")
_FILE_NAME = re.compile(r"ecg_\d{3}\.(png|zip)|samples\.npz")
_MEDIA_TYPES = {".png": "image/png", ".zip": "application/zip", ".npz": "application/octet-stream"}


class ServeError(Exception):
    """A request the server refuses: HTTP `status` and a one-line message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------
# Request and response schemas (for the OpenAPI page; the body is parsed by `parse_request`, so
# that a bad value gets the library's message rather than a schema error)
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
# Parsing: JSON values (or strings from a form) -> the types the library validates
# ----------------------------------------------------------------------------------------------


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value, integer: bool = False):
    """`value` as a float (an int if `integer` and whole), or unchanged when it is not a number,
    so that the library's validation names it in its message."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if integer and isinstance(value, float) and value.is_integer():
        return int(value)
    if not integer and isinstance(value, int):
        return float(value)  # as the command line's float arguments: "got 130.0"
    return value


def _flag(name: str, value) -> bool | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ServeError(422, f"{name} must be true or false, got {value!r}")


def parse_request(payload) -> dict[str, Any]:
    """Field names, presence and types of a generate request; values are checked by the library."""
    if not isinstance(payload, dict):
        raise ServeError(
            400,
            "the request body must be a JSON object, e.g. "
            '{"report": "Sinus rhythm", "age": 50, "sex": "F", "heart_rate": 70}',
        )
    payload = dict(payload)
    if "hr" in payload:
        if "heart_rate" in payload:
            raise ServeError(422, "give heart_rate or hr, not both")
        payload["heart_rate"] = payload.pop("hr")
    unknown = sorted(set(payload) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ServeError(
            422, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(REQUIRED + OPTIONAL)}"
        )
    missing = [name for name in REQUIRED if payload.get(name) is None or (name != "report" and _blank(payload[name]))]
    if missing:
        raise ServeError(422, f"give {', '.join(missing)}")
    report = payload["report"]
    if not isinstance(report, str) and not (isinstance(report, list) and all(isinstance(s, str) for s in report)):
        raise ServeError(422, f"report must be text (statements separated by '|'), got {report!r:.80}")
    sampler = payload.get("sampler")
    return dict(
        report=report,
        age=_number(payload["age"]),
        sex=payload["sex"],
        heart_rate=_number(payload["heart_rate"]),
        num_samples=1 if _blank(payload.get("num_samples")) else _number(payload["num_samples"], integer=True),
        seed=0 if _blank(payload.get("seed")) else _number(payload["seed"], integer=True),
        sampler=None if _blank(sampler) else (sampler.strip().lower() if isinstance(sampler, str) else sampler),
        num_steps=None if _blank(payload.get("num_steps")) else _number(payload["num_steps"], integer=True),
        guidance_scale=None if _blank(payload.get("guidance_scale")) else _number(payload["guidance_scale"]),
        eta=None if _blank(payload.get("eta")) else _number(payload["eta"]),
        exact_limb_leads=_flag("exact_limb_leads", payload.get("exact_limb_leads")),
        return_signals=bool(_flag("return_signals", payload.get("return_signals"))),
    )


# ----------------------------------------------------------------------------------------------
# The service: one pipeline, one lock, one temporary directory
# ----------------------------------------------------------------------------------------------


class ECGService:
    """Holds the model, serialises its calls and keeps the generated files."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        warmup_sizes=WARMUP_SIZES,
        warmup_options: dict | None = None,
    ):
        from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, read_model_config
        from diffusets_jax.sampling import Sampling

        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"--max-samples must be a positive integer, got {max_samples!r}")
        self.checkpoint = Path(DEFAULT_MODEL_DIR if checkpoint is None else checkpoint)
        # Its files and config checked at once, as load_pretrained will (the weights load in the background).
        self.config = read_model_config(self.checkpoint)
        self.defaults = Sampling.from_config(self.config)  # the model's sampling defaults, checked
        card = self.checkpoint / "MODEL_CARD.md"
        self.model_card = card.read_text(encoding="utf-8").splitlines() if card.is_file() else None
        self.max_samples = max_samples
        self.warmup_sizes = tuple(warmup_sizes)
        self.warmup_options = dict(warmup_options or {})
        self.pipeline = None
        self.ready = threading.Event()
        self.error: str | None = None
        self.root: Path | None = None
        self.started = time.time()
        self.warmup_seconds: float | None = None
        self.served = 0
        self._waiting = 0
        self._model_lock = threading.Lock()  # one model call at a time
        self._files_lock = threading.Lock()  # PNG rendering, WFDB writing and run pruning
        self._count_lock = threading.Lock()
        self._runs: deque[str] = deque()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the temporary directory and load and compile the model in a background thread."""
        self.root = Path(tempfile.mkdtemp(prefix="diffusets-serve-"))
        threading.Thread(target=self._warm_up, name="diffusets-warm-up", daemon=True).start()

    def close(self) -> None:
        """Remove every generated file."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def _warm_up(self) -> None:
        try:
            with self._model_lock:
                start = time.perf_counter()
                from diffusets_jax.pipeline import Pipeline

                pipeline = Pipeline.from_pretrained(self.checkpoint)
                options = pipeline.sampling(**self.warmup_options)
                for size in sorted({self.bucket(n) for n in self.warmup_sizes}):
                    pipeline("Sinus rhythm", age=50, sex="F", heart_rate=70, num_samples=size, sampling=options)
                self.pipeline = pipeline
                self.warmup_seconds = time.perf_counter() - start
            self.ready.set()
            log.info("model %s ready after %.1f s", self.checkpoint, self.warmup_seconds)
        except Exception as error:  # reported by /api/health; the server keeps answering
            self.error = f"{type(error).__name__}: {error}"
            log.exception("loading the model failed")

    @property
    def status(self) -> str:
        return "failed" if self.error else "ready" if self.ready.is_set() else "warming up"

    def bucket(self, n: int) -> int:
        """ECGs generated for a request of `n`: the next power of two up to the sampler's batch size."""
        batch = int(self.config.sampling.get("batch_size", 16))
        if n >= batch:
            return n
        size = 1
        while size < n:
            size *= 2
        return min(size, batch)

    # -- summaries ----------------------------------------------------------------------------

    def health(self) -> dict:
        message = {
            "warming up": "warming up: loading and compiling the model",
            "ready": "ready",
            "failed": f"the model could not be loaded: {self.error}",
        }[self.status]
        return {
            "status": self.status,
            "ready": self.status == "ready",
            "message": message,
            "model": self.config.get("name", ""),
            "checkpoint": str(self.checkpoint),
            "queued": self._waiting,
            "served": self.served,
            "max_samples": self.max_samples,
            "uptime_s": round(time.time() - self.started, 1),
            "warmup_s": None if self.warmup_seconds is None else round(self.warmup_seconds, 1),
        }

    def model_info(self) -> dict:
        from diffusets_jax import diffusion
        from diffusets_jax.constants import FS, LEADS
        from diffusets_jax.pipeline import AGE_RANGE, HEART_RATE_RANGE, MAX_REPORT_CHARS, MAX_SEED
        from diffusets_jax.sampling import trained_for_guidance

        defaults = {**self.defaults.as_dict(), "batch_size": self.config.get("sampling", {}).get("batch_size", 16)}
        card = self.model_card
        return {
            "checkpoint": str(self.checkpoint),
            "config_name": self.config.get("name", ""),
            "status": self.status,
            "sampling": defaults,
            "samplers": list(diffusion.SAMPLERS),
            "max_steps": int(self.config.diffusion.num_train_timesteps),
            "trained_for_guidance": trained_for_guidance(self.config),
            "text_embedder": self.config.text.embedder,
            "fs": FS,
            "leads": list(LEADS),
            "limits": {
                "age": list(AGE_RANGE),
                "heart_rate": list(HEART_RATE_RANGE),
                "report_chars": MAX_REPORT_CHARS,
                "num_samples": [1, self.max_samples],
                "seed": [0, MAX_SEED],
            },
            "model_card_title": next((line.lstrip("# ").strip() for line in card if line.startswith("#")), None)
            if card
            else None,
            "model_card": "\n".join(card[:MODEL_CARD_LINES]) if card else None,
        }

    # -- generation ---------------------------------------------------------------------------

    def validate(self, request: dict):
        """The library's checks, in the order `generate` runs them; ServeError(422) with its message."""
        from diffusets_jax.pipeline import check_seed, validate_conditions
        from diffusets_jax.sampling import FIELDS, Sampling

        try:
            options = Sampling.from_config(self.config, **{name: request[name] for name in FIELDS})
            statements, sex = validate_conditions(
                request["report"], request["age"], request["sex"], request["heart_rate"], request["num_samples"]
            )
            seed = check_seed(request["seed"])
        except ValueError as error:
            raise ServeError(422, str(error)) from None
        if request["num_samples"] > self.max_samples:
            raise ServeError(
                422,
                f"num_samples must be at most {self.max_samples} on this server "
                f"(serve --max-samples), got {request['num_samples']}",
            )
        message = options.guidance_warning(self.config)
        return options, statements, sex, seed, [message] if message else []

    def generate(self, payload) -> dict:
        """Parse, validate, generate (one at a time), write the files; the JSON answer."""
        request = parse_request(payload)
        if self.error:
            raise ServeError(503, f"the model could not be loaded: {self.error}")
        if not self.ready.is_set():
            raise ServeError(503, "the model is warming up (loading and compiling); try again in a moment")
        options, statements, sex, seed, warnings = self.validate(request)
        n = request["num_samples"]
        with self._count_lock:
            if self._waiting >= MAX_QUEUE:
                raise ServeError(503, f"the server is busy ({self._waiting} requests waiting); try again later")
            self._waiting += 1
        arrived = time.perf_counter()
        try:
            with self._model_lock:
                started = time.perf_counter()
                result = self.pipeline(
                    statements,
                    age=float(request["age"]),
                    sex=sex,
                    heart_rate=float(request["heart_rate"]),
                    num_samples=self.bucket(n),
                    seed=seed,
                    sampling=options,
                )
            generated = time.perf_counter()
        finally:
            with self._count_lock:
                self._waiting -= 1
        result = dataclasses.replace(result, signals=result.signals[:n])
        run_id, measured = self._write(result)
        done = time.perf_counter()
        with self._count_lock:
            self.served += 1
        log.info("run %s: %d ECG(s) in %.2f s (waited %.2f s)", run_id, n, done - arrived, started - arrived)

        url = f"/api/files/{run_id}"
        answer = {
            "id": run_id,
            "report": result.report,
            "prompt": result.prompt,
            "age": result.age,
            "sex": result.sex,
            "heart_rate": result.heart_rate,
            "num_samples": n,
            "seed": result.seed,
            "sampler": result.sampler,
            "num_steps": result.num_steps,
            "guidance_scale": result.guidance_scale,
            "eta": options.eta,
            "exact_limb_leads": result.exact_limb_leads,
            "fs": result.fs,
            "leads": list(result.leads),
            "npz": f"{url}/samples.npz",
            "ecgs": [
                {
                    "index": i,
                    "record": f"ecg_{i:03d}",
                    "requested_heart_rate": result.heart_rate,
                    "measured_heart_rate": None if not math.isfinite(rate) else round(float(rate), 1),
                    "png": f"{url}/ecg_{i:03d}.png",
                    "wfdb_zip": f"{url}/ecg_{i:03d}.zip",
                }
                for i, rate in enumerate(measured)
            ],
            "seconds": {
                "queued": round(started - arrived, 3),
                "generate": round(generated - started, 3),
                "files": round(done - generated, 3),
                "total": round(done - arrived, 3),
            },
            "warnings": warnings,
            "signals": np.round(result.signals, 5).tolist() if request["return_signals"] else None,
        }
        return answer

    def _write(self, result) -> tuple[str, np.ndarray]:
        """`generate`'s files (WFDB, PNG, samples.npz), one zip per record, measured heart rates."""
        from diffusets_jax.evaluation.metrics import heart_rates
        from diffusets_jax.pipeline import write_outputs

        run_id = secrets.token_hex(8)
        with self._files_lock:
            run_dir = self.root / run_id
            for record in write_outputs(result, run_dir, png=True):
                with zipfile.ZipFile(record.with_suffix(".zip"), "w", zipfile.ZIP_DEFLATED) as archive:
                    for suffix in (".hea", ".dat"):
                        archive.write(record.with_suffix(suffix), record.name + suffix)
            measured = heart_rates(result.signals, result.fs)
            self._runs.append(run_id)
            while len(self._runs) > KEEP_RUNS:
                shutil.rmtree(self.root / self._runs.popleft(), ignore_errors=True)
        return run_id, measured

    def file(self, run_id: str, name: str) -> Path:
        if not _RUN_ID.fullmatch(run_id) or not _FILE_NAME.fullmatch(name) or self.root is None:
            raise ServeError(404, "no such file")
        path = self.root / run_id / name
        if not path.is_file():
            raise ServeError(
                404, f"no such file (the server keeps the files of the last {KEEP_RUNS} generations until it stops)"
            )
        return path


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
