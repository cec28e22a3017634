"""Whether a Hugging Face Hub model id can be loaded now: from the local cache, or from the Hub itself.

Asked before anything runs (``commands.config_checks.validate``), so that a model that cannot be had is one line
naming the id and the ways out, instead of transformers' answer: a traceback after the run folder and the MLflow
run exist, and, online but with the Hub unreachable, half a minute of retries first (huggingface_hub backs off five
times on a failed lookup). The check itself makes one request with a short timeout and no retries, and only when
the id is not cached; an id the Hub does not know (a typo) is named as such.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

TIMEOUT_S = 5.0
TRUE = ("1", "on", "yes", "true")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' older ``TRANSFORMERS_OFFLINE``) set, as huggingface_hub reads it."""
    return any(os.environ.get(name, "").strip().lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id at all: the Hub lookup says so
        return False


def hub_problems(repo_id: str, key: str = "model.name_or_path") -> list[str]:
    """Nothing when ``repo_id`` is cached or the Hub has it; else one line saying why and what to do."""
    if is_cached(repo_id):
        return []
    from huggingface_hub import constants

    where = f"{key}={repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    ways_out = (
        "use model=minilm (offline), a local folder (model.name_or_path=/path/to/model), or download it once with "
        "internet into that cache (HF_HOME moves it)"
    )
    if offline():
        return [f"{where} and HF_HUB_OFFLINE=1 forbids downloading it; {ways_out}"]
    answer = _ask_hub(constants.ENDPOINT.rstrip("/"), repo_id)
    if answer is None:
        return []
    if answer in (401, 404):
        return [
            f"{key}={repo_id}: the Hub ({constants.ENDPOINT}) has no such model; check the id "
            "(e.g. bert-base-chinese, hfl/chinese-roberta-wwm-ext), or set HF_TOKEN for a private one"
        ]
    return [f"{where} and the Hub ({constants.ENDPOINT}) cannot be reached ({answer}); {ways_out}"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect (to the file's storage) means the file exists
        return None


def _ask_hub(endpoint: str, repo_id: str) -> int | str | None:
    """None when the Hub serves the model's config.json; else the HTTP status or the network error, in words."""
    from huggingface_hub.utils import build_hf_headers

    request = urllib.request.Request(
        f"{endpoint}/{repo_id}/resolve/main/config.json", method="HEAD", headers=build_hf_headers()
    )
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError as error:
        return None if 300 <= error.code < 400 else error.code
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return str(getattr(reason, "strerror", None) or reason)
