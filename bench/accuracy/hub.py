"""Whether the Hugging Face hub is reachable, and offline mode when it is not.

Without a hub, `datasets` and `huggingface_hub` retry each request for half a minute before failing. A
worker probes the hub once (a TCP connection, 3 s at most) and, when nothing answers, switches both
libraries to offline mode: a model or dataset in the local cache still loads, anything else fails at once.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return any(os.environ.get(v, "").lower() in TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def reachable(timeout_s: float = 3.0) -> bool:
    if offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def offline_unless_reachable() -> bool:
    """Put this process in offline mode when the hub does not answer; True when offline."""
    if reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # The libraries read these flags into module globals at import; set those too if already imported.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True
        sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True
    return True
