"""The generation service behind `diffusets-jax serve`: request parsing and `ECGService`.

`diffusets_jax.serve` puts this behind its FastAPI routes (`create_app`); this module holds what
the routes call, with no web framework in it:

* `parse_request` turns a generate request (a JSON object, or the strings an HTML form sends)
  into the types the library validates; field names, presence and types only. `ServeError`
  carries the HTTP status and one-line message of a refused request.
* `ECGService` holds one model in memory, loaded and compiled at start-up in a background thread
  (`ECGService.start`); until it is ready its status is "warming up" and `generate` answers 503.
* Requests are served one model call at a time (a lock); at most `MAX_QUEUE` wait, more get 503.
* Inputs are checked by the library's own validation (`Sampling.from_config`, `validate_conditions`),
  once per request, so a bad value gets the same message as on the command line, as a 4xx
  `{"detail": message}`; the checked `Sampling` is what the pipeline runs.
  `--max-samples` caps ECGs per request. ECG counts are rounded up to a power of two for the
  compiled sampler (ECG j comes from its own key, so the first n of a batch are the n asked for)
  and the padding is dropped: at most log2(batch size) + 1 compilations per sampling setting.
* Generated files go to one temporary directory, removed when the server stops
  (`ECGService.close`); the last `KEEP_RUNS` generations are kept. Nothing is written anywhere else.
"""

from __future__ import annotations

import dataclasses
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

log = logging.getLogger(__name__)

#: ECGs one request may ask for unless `serve --max-samples` says otherwise.
DEFAULT_MAX_SAMPLES = 16
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


class ServeError(Exception):
    """A request the server refuses: HTTP `status` and a one-line message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
