"""The demo's screen: timestamped progress lines, stage banners, and third-party log noise counted, not printed."""
from __future__ import annotations

import logging
import re
import time
from collections import Counter


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ThirdPartyNoise(logging.Filter):
    """Keeps the demo's screen for its own progress: NeMo's logger carries NeMo's INFO lines (the
    exp_manager schema dump) and every Python warning (NeMo captures warnings into it). Below ERROR
    they are dropped here and the warnings counted by the package they come from (summarised once at
    the end); this package's own warnings and every error still print. `--verbose` skips the filter."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            m = re.search(r"site-packages/([A-Za-z0-9_]+)", text)
            if m is None and "llm2clip_nemo" in text:
                return True
            self.counts[m.group(1) if m else record.name] += 1
        return False

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.counts.most_common())
        return f"third-party warnings not shown: {sum(self.counts.values())}" + (f" ({parts})" if parts else "") + \
            "; python -m llm2clip_nemo.demo --verbose shows them"


def quiet_third_party() -> ThirdPartyNoise:
    """Install `ThirdPartyNoise` on NeMo's logger and keep Lightning's accelerator banner out."""
    from nemo.utils import logging as nemo_logging  # noqa: F401  (creates 'nemo_logger', captures warnings)

    noise = ThirdPartyNoise()
    logging.getLogger("nemo_logger").addFilter(noise)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    return noise


def stage(title: str):
    log("=" * 8 + f" {title} " + "=" * 8)

