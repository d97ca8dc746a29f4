"""`tfp-vae report`: a run's pictures and the page that shows them."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from tfp_vae import Config, train
from tfp_vae.cli import main


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(300, 2)) @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(size=(300, 4))) * [1, 10, 100, 0.1]
    folder = tmp_path_factory.mktemp("report")
    np.save(folder / "rows.npy", x.astype(np.float32))
    train(Config(epochs=3, early_stopping_patience=1, kl_warmup_epochs=1, hidden=(8,), normalization="standardize",
                 transform="none", seed=0), x.astype(np.float32), folder / "run", verbose=0)
    assert main(["report", str(folder / "run"), str(folder / "rows.npy"), "--out", str(folder / "page")]) == 0
    assert main(["report", str(folder / "run"), "--out", str(folder / "plain")]) == 0
    return folder


def test_the_page_shows_every_picture_it_wrote(reported):
    for page, expected in (("page", {"loss_terms", "candidates", "sigma", "calibration", "codes"}),
                           ("plain", {"loss_terms", "candidates", "sigma"})):
        files = {name[:-4] for name in os.listdir(reported / page) if name.endswith(".png")}
        assert files == expected, (page, files)
        index = (reported / page / "index.html").read_text()
        assert set(re.findall(r'<img src="(\w+)\.png"', index)) == expected
        for name in expected:
            with open(reported / page / f"{name}.png", "rb") as file:
                assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "log-likelihood, nats per row" in (reported / "page" / "index.html").read_text()


def test_a_used_folder_is_refused_before_any_work(reported, capsys):
    assert main(["report", str(reported / "run"), "--out", str(reported / "page")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no Chromium installed (Debian: apt install chromium)")
def test_a_real_browser_renders_the_page(reported, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1400,3000", f"file://{reported / 'page' / 'index.html'}"],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{reported / 'page' / 'index.html'}"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert dom.count("<img") == 5 and shot.stat().st_size > 50_000
