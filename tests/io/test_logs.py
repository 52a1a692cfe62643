"""Logging: one JSON line per event with the agreed keys, stdlib bridged, and secrets never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from cloverwoo_daemon.io.logs import REDACTED, configure_logging

SECRET = "ck_9f8e7d6c5b4a39281706"
AUTH = "0307e264-b33a-4913-88aa-37b10014a0b8"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for h in list(root.handlers):
        if type(h).__name__ == "_Handler":
            root.removeHandler(h)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_json_lines_with_agreed_keys(out: io.StringIO) -> None:
    configure_logging(stream=out)  # a StringIO is not a tty: JSON by default
    structlog.get_logger().info("merged", sku="TSHIRT-M", location="downtown", woo_product_id=12)
    structlog.get_logger().debug("hidden at info")
    [line] = lines(out)
    assert line["event"] == "merged" and line["level"] == "info"
    assert line["sku"] == "TSHIRT-M" and line["woo_product_id"] == 12
    assert isinstance(line["timestamp"], str) and line["timestamp"].startswith("20") and "T" in line["timestamp"]


def test_stdlib_is_bridged_and_noisy_libraries_quieted(out: io.StringIO) -> None:
    configure_logging(stream=out, level="debug")
    logging.getLogger("cloverwoo.test").warning("disk %s is %d%% full", "sda", 93)
    logging.getLogger("httpx").info("HTTP Request: GET https://x/?consumer_secret=...")
    logging.getLogger("hypercorn.error").info("Running on http://127.0.0.1:1")
    logging.getLogger("hypercorn.error").error("boom")
    got = lines(out)
    assert [(g["event"], g["level"]) for g in got] == [("disk sda is 93% full", "warning"), ("boom", "error")]
    assert all("timestamp" in g for g in got)


def test_secrets_never_appear(out: io.StringIO) -> None:
    configure_logging(stream=out, secrets=[SECRET, AUTH, ""])
    log = structlog.get_logger()
    log.info(f"calling with {SECRET}", header=AUTH, url=f"https://x/?k={SECRET}&a=1",
             nested={"deep": [f"Bearer {SECRET}", {AUTH: 1}]}, obj=RuntimeError(AUTH), raw=AUTH.encode())
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        log.exception("failed")
    logging.getLogger("quart.app").error("stdlib %s leaked", AUTH)
    text = out.getvalue()
    assert SECRET not in text and AUTH not in text
    got = lines(out)
    assert len(got) == 3
    assert got[0]["header"] == REDACTED and got[0]["url"] == f"https://x/?k={REDACTED}&a=1"
    assert got[0]["nested"] == {"deep": [f"Bearer {REDACTED}", {REDACTED: 1}]}
    assert "ValueError" in str(got[1]["exception"]) and REDACTED in str(got[1]["exception"])
    assert got[2]["event"] == f"stdlib {REDACTED} leaked"


def test_console_renderer_redacts_too(out: io.StringIO) -> None:
    configure_logging(stream=out, json=False, secrets=[SECRET])
    structlog.get_logger().warning("token", value=SECRET)
    text = out.getvalue()
    assert "token" in text and REDACTED in text and SECRET not in text


def test_reconfigure_replaces_handler(out: io.StringIO) -> None:
    configure_logging(stream=out)
    configure_logging(stream=out)
    structlog.get_logger().warning("once")
    assert len(lines(out)) == 1
    with pytest.raises(ValueError, match="level"):
        configure_logging(stream=out, level="loud")


def test_secrets_learned_at_run_time_are_redacted_bounded_and_survive_a_reconfigure(out: io.StringIO) -> None:
    from cloverwoo_daemon.io import logs

    configure_logging(stream=out, secrets=[SECRET])
    log = structlog.get_logger()
    token = "acc-7f3a9c1e-0b2d-4e5f-8a6b"
    log.info("before", detail=f"Bearer {token}")  # not known yet: nothing to redact it with
    logs.redact_also(token, "", "short")  # empty and short values are not credentials: ignored
    log.info("after", detail=f"Bearer {token}", word="a short word")
    configure_logging(stream=out, secrets=[SECRET])  # the CLI reconfigures before running the daemon
    log.info("reconfigured", detail=token)
    got = lines(out)
    assert got[0]["detail"] == f"Bearer {token}"
    assert got[1]["detail"] == f"Bearer {REDACTED}" and got[1]["word"] == "a short word"
    assert got[2]["detail"] == REDACTED
    for i in range(logs.LEARNED_KEPT + 5):  # a year of hourly refreshes keeps only the newest
        logs.redact_also(f"refreshed-token-{i:04d}")
    assert logs._active is not None
    assert len(logs._active.secrets) == logs.LEARNED_KEPT + 1  # + the configured one, never forgotten
    log.info("old", a="refreshed-token-0000", b=f"refreshed-token-{logs.LEARNED_KEPT + 4:04d}", c=SECRET)
    last = lines(out)[-1]
    assert last["a"] == "refreshed-token-0000" and last["b"] == REDACTED and last["c"] == REDACTED
    logs._active = None
