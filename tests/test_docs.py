"""The documentation site builds with no warnings, and its configuration reference is
generated from the settings models (every key appears, with its description)."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

from daemon.config.settings import Account, OAuth2Settings, Settings
from training.config import RetrainConfig
from training.sweep import SweepConfig

REPO = Path(__file__).resolve().parent.parent


def test_docs_build_strict_with_a_generated_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = (site / "configuration/index.html").read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    for model in (Settings, Account, OAuth2Settings, RetrainConfig, SweepConfig):
        for name, field in model.model_fields.items():
            assert f" {name} " in text, f"{model.__name__}.{name} missing from the reference"
            if field.description:  # the description itself, as rendered
                words = " ".join(field.description.replace("`", "").split())
                assert words[:40] in text, f"{model.__name__}.{name}: {words[:40]!r}"
    # The pages that include README sections really contain them.
    gmail = (site / "gmail/index.html").read_text()
    assert "cleaninbox auth gmail" in gmail
    assert "liveness_timeout" in gmail
    rules = (site / "rules/index.html").read_text()
    assert "Triage/Security" in rules
