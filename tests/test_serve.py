"""`diffusets-jax serve`: the JSON API (FastAPI's TestClient), the page in headless Chromium
(Selenium) and a bounded load test against a server started as a subprocess on a loopback port.

The browser and load tests are marked slow (the server loads and compiles the model, about a
minute on 2 cores); they run in the default `pytest` run too. Set DIFFUSETS_SCREENSHOT=path to keep
the browser test's screenshot (docs/web-page.png was made that way).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from diffusets_jax.constants import FS, LEADS, NUM_SAMPLES

STEPS = 5  # the API tests sample with 5 steps; the server compiles exactly that at start-up
READY_TIMEOUT_S = 900  # loading and compiling on a busy 2-core machine
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ok(report="Sinus rhythm", **fields):
    return {"report": report, "age": 50, "sex": "F", "heart_rate": 70, "num_steps": STEPS, **fields}


# ----------------------------------------------------------------------------------------------
# API (TestClient)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api():
    """A started app (lifespan run), its first answers while warming up, then ready."""
    from fastapi.testclient import TestClient

    from diffusets_jax.serve import create_app

    app = create_app(max_samples=4, warmup_sizes=(1,), warmup_options={"num_steps": STEPS})
    service = app.state.service
    with TestClient(app) as client:
        early = {"health": client.get("/api/health"), "generate": client.post("/api/generate", json=_ok())}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not service.ready.is_set():
            assert service.error is None, service.error
            assert time.monotonic() < deadline, "the model did not warm up in time"
            time.sleep(0.5)
        root = service.root
        assert root.is_dir()
        yield client, service, early
    assert not root.exists(), "the temporary directory outlived the server"


def test_warming_up_then_ready(api):
    client, service, early = api
    assert early["health"].status_code == 200
    assert early["health"].json()["status"] == "warming up"
    assert early["generate"].status_code == 503
    assert "warming up" in early["generate"].json()["detail"]
    health = client.get("/api/health").json()
    assert health["status"] == "ready" and health["ready"] is True
    assert health["max_samples"] == 4 and health["warmup_s"] > 0


def test_model_summary(api):
    client, service, _ = api
    info = client.get("/api/model").json()
    config = json.loads((service.checkpoint / "config.json").read_text())
    assert info["config_name"] == config["name"]
    for key in ("sampler", "num_steps", "guidance_scale", "exact_limb_leads"):
        assert info["sampling"][key] == config["sampling"][key]
    assert info["samplers"] == ["ddpm", "ddim", "dpm-solver++"]
    assert info["limits"]["num_samples"] == [1, 4]
    card = service.checkpoint / "MODEL_CARD.md"
    if card.is_file():
        assert info["model_card"].splitlines()[0] == card.read_text().splitlines()[0]


def test_page_and_docs_are_served_offline(api):
    client, _, _ = api
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate-form"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert "cdn." not in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/generate", "/api/health", "/api/model"} <= set(schema["paths"])
    assert "report" in json.dumps(schema["paths"]["/api/generate"]["post"]["requestBody"])


def test_generate_signals_and_files(api, tmp_path):
    import wfdb

    client, service, _ = api
    request = {
        "report": " Sinus tachycardia | Left ventricular hypertrophy|",
        "age": "63",
        "sex": "male",
        "hr": 110,
        "num_samples": 2,
        "seed": 7,
        "num_steps": STEPS,
        "return_signals": True,
    }
    response = client.post("/api/generate", json=request)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["report"] == "Sinus tachycardia|Left ventricular hypertrophy"
    assert (answer["sex"], answer["age"], answer["heart_rate"], answer["seed"]) == ("M", 63.0, 110.0, 7)
    assert answer["num_steps"] == STEPS and answer["num_samples"] == 2 and len(answer["ecgs"]) == 2
    signals = np.asarray(answer["signals"], np.float32)
    assert signals.shape == (2, NUM_SAMPLES, len(LEADS)) and np.isfinite(signals).all()
    # The same ECGs as the library gives for the same arguments.
    expected = service.pipeline(
        "Sinus tachycardia|Left ventricular hypertrophy",
        age=63,
        sex="M",
        heart_rate=110,
        num_samples=2,
        seed=7,
        num_steps=STEPS,
    ).signals
    np.testing.assert_allclose(signals, expected, atol=2e-5)
    for ecg in answer["ecgs"]:
        assert ecg["requested_heart_rate"] == 110.0
        assert ecg["measured_heart_rate"] is None or 20 <= ecg["measured_heart_rate"] <= 300

    png = client.get(answer["ecgs"][1]["png"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)
    archive = client.get(answer["ecgs"][0]["wfdb_zip"])
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert sorted(z.namelist()) == ["ecg_000.dat", "ecg_000.hea"]
        z.extractall(tmp_path)
    record = wfdb.rdrecord(str(tmp_path / "ecg_000"))
    assert record.n_sig == 12 and list(record.sig_name) == list(LEADS) and record.sig_len == NUM_SAMPLES
    assert record.fs == pytest.approx(FS)
    np.testing.assert_allclose(record.p_signal, signals[0], atol=1e-3)  # 1 uV steps
    with np.load(io.BytesIO(client.get(answer["npz"]).content)) as npz:
        np.testing.assert_allclose(npz["signals"], signals, atol=2e-5)
    assert client.get(f"/api/files/{answer['id']}/../../etc/passwd").status_code == 404
    assert client.get(f"/api/files/{answer['id']}/ecg_009.png").status_code == 404


#: (request changes, expected message): the messages `diffusets-jax generate` prints for these values.
CLI_CASES = [
    ({"report": ""}, "report has no statements: ''"),
    ({"report": " | "}, "report has no statements: ' | '"),
    ({"report": "x" * 100_000}, "report is too long: 100000 characters, at most 5000"),
    ({"age": 130}, "age must be a number in [0, 120], got 130.0"),
    ({"age": -1}, "age must be a number in [0, 120], got -1.0"),
    ({"sex": "X"}, "sex must be 'M' or 'F' (or male/female), got 'X'"),
    ({"heart_rate": 10}, "heart_rate must be a number in [20, 300], got 10.0"),
    ({"num_samples": 0}, "num_samples must be an integer in [1, 10000], got 0"),
    ({"num_steps": 0}, "num_steps must be an integer in [1, 1000], got 0"),
    ({"guidance_scale": -1}, "guidance_scale must be a number in [0, 50], got -1.0"),
]

#: Inputs the command line cannot express (argparse types them), with the library's message.
API_CASES = [
    ({"age": "abc"}, 422, "age must be a number in [0, 120], got 'abc'"),
    ({"heart_rate": "fast"}, 422, "heart_rate must be a number in [20, 300], got 'fast'"),
    ({"age": True}, 422, "age must be a number in [0, 120], got 'true'"),
    ({"num_samples": "many"}, 422, "num_samples must be an integer in [1, 10000], got 'many'"),
    ({"num_samples": 2.5}, 422, "num_samples must be an integer in [1, 10000], got 2.5"),
    ({"num_samples": 5}, 422, "num_samples must be at most 4 on this server (serve --max-samples), got 5"),
    ({"seed": -1}, 422, "seed must be an integer in [0, 4294967295], got -1"),
    ({"seed": "x"}, 422, "seed must be an integer in [0, 4294967295], got 'x'"),
    ({"sampler": "euler"}, 422, "sampler must be one of ddpm, ddim, dpm-solver++, got 'euler'"),
    ({"exact_limb_leads": "maybe"}, 422, "exact_limb_leads must be true or false, got 'maybe'"),
    ({"report": 42}, 422, "report must be text (statements separated by '|'), got 42"),
    ({"age": None}, 422, "give age"),
    ({"age": "", "sex": " "}, 422, "give age, sex"),
    ({"colour": "red"}, 422, "unknown field(s) 'colour'"),
    ({"hr": 80}, 422, "give heart_rate or hr, not both"),
]


@pytest.mark.parametrize("change,message", CLI_CASES)
def test_bad_input_same_message_as_cli(api, change, message, tmp_path, monkeypatch, capsys):
    from diffusets_jax import cli
    from diffusets_jax.pipeline import Pipeline

    client, service, _ = api
    response = client.post("/api/generate", json={**_ok(), **change})
    assert response.status_code == 422
    assert response.json() == {"detail": message}
    # The command line with the same values (the loaded model stands in for from_pretrained).
    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda cls, *a, **k: service.pipeline))
    values = {**_ok(), **change}
    argv = [
        "generate",
        "--report",
        values["report"],
        "--age",
        str(values["age"]),
        "--sex",
        values["sex"],
        "--hr",
        str(values["heart_rate"]),
        "--num-steps",
        str(values["num_steps"]),
        "--out",
        str(tmp_path),
    ]
    for name in ("num_samples", "guidance_scale"):
        if name in values:
            argv += [f"--{name.replace('_', '-')}", str(values[name])]
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"diffusets-jax generate: error: {message}"


@pytest.mark.parametrize("change,status,message", API_CASES)
def test_bad_input_api(api, change, status, message):
    client, _, _ = api
    response = client.post("/api/generate", json={**_ok(), **change})
    assert response.status_code == status
    assert response.json()["detail"].startswith(message)


def test_bad_bodies(api):
    client, _, _ = api
    for body in (b"not json", b"[1, 2]", b""):
        response = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["detail"].startswith("the request body must be a JSON object")
    response = client.post("/api/generate", content=b"x" * (2 << 20))
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_requests_never_run_the_model_in_parallel(api, monkeypatch):
    client, service, _ = api

    class Counting:
        """The pipeline, counting how many calls run at once."""

        def __init__(self, inner):
            self.inner, self.active, self.peak, self.calls = inner, 0, 0, 0
            self.lock = threading.Lock()

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            with self.lock:
                self.active += 1
                self.calls += 1
                self.peak = max(self.peak, self.active)
            try:
                time.sleep(0.2)
                return self.inner(*args, **kwargs)
            finally:
                with self.lock:
                    self.active -= 1

    counting = Counting(service.pipeline)
    monkeypatch.setattr(service, "pipeline", counting)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda seed: client.post("/api/generate", json=_ok(seed=seed)), range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.json()["id"] for r in responses}) == 6
    assert [r.json()["seed"] for r in responses] == list(range(6))
    assert counting.calls == 6 and counting.peak == 1


def test_cli_serve_arguments():
    from diffusets_jax.cli import build_parser
    from diffusets_jax.serve import create_app

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_samples, args.checkpoint) == ("127.0.0.1", 8000, 16, None)
    with pytest.raises(ValueError, match="--max-samples must be a positive integer"):
        create_app(max_samples=0)
    with pytest.raises(FileNotFoundError, match="not a diffusets-jax model directory"):
        create_app(checkpoint="/nonexistent")


# ----------------------------------------------------------------------------------------------
# A real server (subprocess on a free loopback port): the page in Chromium, then a load test
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Server:
    def __init__(self, url, process, log, tmpdir):
        self.url, self.process, self.log, self.tmpdir = url, process, log, tmpdir

    def health(self) -> dict:
        try:
            return json.loads(_get(self.url + "/api/health", timeout=10))
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["status"] == "ready":
                return health
            assert health["status"] == "warming up", f"{health}\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the server did not warm up in time"
            time.sleep(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`diffusets-jax serve --max-samples 4` with the shipped model; TMPDIR points at a fresh folder
    so that the teardown can check the server removed its files."""
    base = tmp_path_factory.mktemp("serve")
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = base / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "diffusets_jax.cli", "serve", "--port", str(port), "--max-samples", "4"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # the socket opens before the model is loaded
        assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            _get(url + "/api/health", timeout=5)
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    yield Server(url, process, log, tmpdir)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("the server did not stop on SIGINT")
    assert not list(tmpdir.glob("diffusets-serve-*")), "the server left its temporary files behind"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium not installed: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _expected_png_size(lines: int = 1) -> tuple[int, int]:
    """Pixel size of `plot_ecg`'s PNG with a title of `lines` lines (the plotting function decides)."""
    from PIL import Image

    from diffusets_jax.plotting import plot_ecg

    from diffusets_jax.plotting import DPI

    buffer = io.BytesIO()
    figure = plot_ecg(np.zeros((NUM_SAMPLES, len(LEADS))), title="\n".join(["title"] * lines))
    figure.savefig(buffer, dpi=DPI, format="png")  # as plot_ecg(path=...) saves it
    return Image.open(buffer).size


@pytest.mark.slow
def test_page_in_browser(server, browser, tmp_path):
    import wfdb
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def by_id(name):
        return browser.find_element(By.ID, name)

    def submit_and_wait_for_error(box="error"):
        by_id("generate-button").click()
        WebDriverWait(browser, 120).until(lambda d: by_id(box).is_displayed())
        return by_id(box).text

    browser.get(server.url + "/")
    if server.health()["status"] == "warming up":  # fresh server: the page must say so
        assert "warming up" in by_id("status").text
        assert not by_id("generate-button").is_enabled()
    WebDriverWait(browser, READY_TIMEOUT_S, poll_frequency=1).until(
        EC.text_to_be_present_in_element((By.ID, "status"), "ready")
    )
    assert by_id("generate-button").is_enabled()

    # A report from the examples, a patient, two ECGs.
    browser.find_element(By.XPATH, "//button[@class='example'][contains(., 'bradycardia')]").click()
    assert by_id("report").get_attribute("value") == "Sinus bradycardia|First degree AV block"
    assert by_id("heart-rate").get_attribute("value") == "48"
    by_id("age").clear()
    by_id("age").send_keys("71")
    Select(by_id("sex")).select_by_value("F")
    by_id("generate-button").click()
    images = WebDriverWait(browser, 300).until(
        lambda d: (
            lambda imgs: (
                imgs
                if len(imgs) == 2
                and all(
                    d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs
                )
                else False
            )
        )(d.find_elements(By.CSS_SELECTOR, "#results img.ecg-image"))
    )
    assert by_id("error").is_displayed() is False
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .heart-rate")]
    assert len(captions) == 2 and all(c.startswith("requested 48 bpm · measured ") for c in captions), captions

    png = _get(images[0].get_attribute("src"))
    assert png.startswith(PNG_MAGIC)
    size = Image.open(io.BytesIO(png)).size
    assert size == _expected_png_size(1)
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", images[0]) == list(
        size
    )

    zip_link = browser.find_element(By.XPATH, "//div[@id='results']//a[contains(., 'WFDB')]")
    with zipfile.ZipFile(io.BytesIO(_get(zip_link.get_attribute("href")))) as z:
        z.extractall(tmp_path)
    record = wfdb.rdrecord(str(tmp_path / "ecg_000"))
    assert record.n_sig == 12 and list(record.sig_name) == list(LEADS) and record.sig_len == NUM_SAMPLES
    assert "report: Sinus bradycardia|First degree AV block" in record.comments
    assert "sex: F" in record.comments and "age: 71" in record.comments

    browser.save_screenshot(os.environ.get("DIFFUSETS_SCREENSHOT") or str(tmp_path / "web-page.png"))

    # Bad input: the server's message on the page.
    by_id("age").clear()
    by_id("age").send_keys("abc")
    assert submit_and_wait_for_error() == "age must be a number in [0, 120], got 'abc'"
    by_id("age").clear()
    by_id("age").send_keys("71")
    browser.execute_script("arguments[0].value = 'x'.repeat(100000)", by_id("report"))
    assert submit_and_wait_for_error() == "report is too long: 100000 characters, at most 5000"
    by_id("report").clear()
    assert submit_and_wait_for_error() == "report has no statements: ''"
    by_id("report").send_keys("Sinus rhythm")
    by_id("num-samples").clear()
    by_id("num-samples").send_keys("9")
    assert submit_and_wait_for_error() == "num_samples must be at most 4 on this server (serve --max-samples), got 9"

    # Compare tab: two heart rates side by side.
    by_id("tab-compare-button").click()
    browser.find_element(By.XPATH, "//button[@class='preset'][contains(., 'heart rates')]").click()
    by_id("compare-button").click()
    WebDriverWait(browser, 300).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#compare-results img")) == 2
            and all(
                i.get_attribute("naturalWidth") != "0" for i in d.find_elements(By.CSS_SELECTOR, "#compare-results img")
            )
        )
    )
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#compare-results h3")]
    assert titles == ["A: Sinus rhythm · 50 bpm", "B: Sinus rhythm · 120 bpm"]


@pytest.mark.slow
def test_load_four_clients(server):
    """20 requests from 4 concurrent clients: every one answered, with its own conditions."""
    server.wait_ready()
    served_before = server.health()["served"]
    reports = [
        "Sinus rhythm|Normal ECG",
        "Atrial fibrillation",
        "Sinus tachycardia|Left ventricular hypertrophy",
        "Sinus bradycardia|First degree AV block",
    ]
    jobs = [
        {
            "report": reports[i % 4],
            "age": 30 + 2 * i,
            "sex": "MF"[i % 2],
            "heart_rate": 50 + 5 * i,
            "seed": i,
            "return_signals": True,
        }
        for i in range(19)
    ]
    jobs.append(dict(jobs[3]))  # the same request twice gives the same ECG
    answers: list = [None] * len(jobs)
    latency = np.zeros(len(jobs))

    def client(k: int) -> None:
        for i in range(k, len(jobs), 4):
            start = time.perf_counter()
            answers[i] = _post(server.url + "/api/generate", jobs[i])
            latency[i] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    wall = time.perf_counter() - start

    assert [status for status, _ in answers] == [200] * len(jobs), [a for s, a in answers if s != 200][:3]
    for job, (_, answer) in zip(jobs, answers):
        assert (answer["report"], answer["age"], answer["heart_rate"], answer["seed"]) == (
            job["report"],
            job["age"],
            job["heart_rate"],
            job["seed"],
        )
        assert np.asarray(answer["signals"]).shape == (1, NUM_SAMPLES, len(LEADS))
        assert _get(server.url + answer["ecgs"][0]["png"]).startswith(PNG_MAGIC)
    assert len({answer["id"] for _, answer in answers}) == len(jobs)
    np.testing.assert_array_equal(answers[3][1]["signals"], answers[-1][1]["signals"])
    assert server.health()["served"] == served_before + len(jobs)

    status = Path(f"/proc/{server.process.pid}/status")
    peak = (
        next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM")), None)
        if status.exists()
        else None
    )
    generate = np.array([answer["seconds"]["generate"] for _, answer in answers])
    files = np.array([answer["seconds"]["files"] for _, answer in answers])
    print(
        f"\nload test: {len(jobs)} requests from 4 clients in {wall:.1f} s ({len(jobs) / wall:.2f} requests/s); "
        f"latency per request median {np.median(latency):.2f} s, mean {latency.mean():.2f} s, "
        f"max {latency.max():.2f} s; per request: model {np.median(generate):.2f} s, "
        f"files + heart rate {np.median(files):.2f} s (medians); server peak memory "
        f"{int(peak) / 1024:.0f} MiB"
        if peak
        else "server peak memory: unknown (no /proc)"
    )
