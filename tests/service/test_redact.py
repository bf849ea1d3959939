"""The redactor that every response, record and log line of the service passes through: what it masks and
what it leaves readable."""

from __future__ import annotations

import logging

import pytest
from cotune.tuner.spec.redact import Redactor, install_log_redaction, redact_url
from cotune.tuner.spec.settings import ServiceSettings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg2://postgres:s3cr3t-pw@db:5432/cotune",
            "postgresql+psycopg2://postgres:***@db:5432/cotune",
        ),
        ("redis://:hunter2hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://hunter2hunter2@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),  # redis-py: a lone userinfo
        ("http://user:p%40ss:word@mlflow:5000", "http://user:***@mlflow:5000"),
        ("https://mlflow.example/api?x=1&token=abcdef123&y=2", "https://mlflow.example/api?x=1&token=***&y=2"),
        ("https://h/?Access_Token=abcdef123", "https://h/?Access_Token=***"),
        (
            "postgresql+psycopg2://postgres@127.0.0.1:5432/cotune",
            "postgresql+psycopg2://postgres@127.0.0.1:5432/cotune",
        ),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_urls_keep_their_host_and_lose_their_credentials(url, shown):
    assert redact_url(url) == shown
    assert Redactor()(f"cannot reach {url} (refused)") == f"cannot reach {shown} (refused)"


def test_configured_secrets_are_masked_anywhere_and_short_ones_only_in_urls():
    settings = ServiceSettings.from_env(
        {
            "COTUNE_STORAGE": "postgresql+psycopg2://cotune:cotune@postgres:5432/cotune",
            "COTUNE_BROKER_URL": "redis://:broker-pass-123@redis:6379/0",
            "COTUNE_API_TOKEN": "w" * 40,
            "MLFLOW_TRACKING_PASSWORD": "mlflow-secret",
        }
    )
    redact = settings.redactor()
    text = f"auth failed for broker-pass-123; token {'w' * 40}; mlflow-secret; the cotune job"
    assert redact(text) == "auth failed for ***; token ***; ***; the cotune job"
    # a percent-encoded password is a secret in both spellings
    assert Redactor.of(["redis://:a%2Fb-long-pw@h/0"])("a/b-long-pw and a%2Fb-long-pw") == "*** and ***"
    assert "w" * 40 not in repr(settings)  # tokens are not in the settings' repr


def test_every_log_record_is_masked_before_a_handler_sees_it(capsys):
    logger = logging.getLogger("cotune.test.redact")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    previous = logging.getLogRecordFactory()
    try:
        install_log_redaction(Redactor(("first-secret-value",)))
        install_log_redaction(Redactor(("t0ken-value-xyz",)))  # again: the new redactor replaces the first
        logger.warning("access %s - %s %d", "127.0.0.1", "GET /jobs?token=t0ken-value-xyz", 401)
        logger.warning("url postgresql://u:t0ken-value-xyz@h/db, first-secret-value stays")
        try:
            raise RuntimeError("connect to redis://:t0ken-value-xyz@h:6379 failed")
        except RuntimeError:
            logger.exception("ticket raised")
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "t0ken-value-xyz" not in err
    assert "GET /jobs?token=*** 401" in err and "postgresql://u:***@h/db" in err
    assert "first-secret-value stays" in err
    assert "RuntimeError: connect to redis://:***@h:6379 failed" in err  # the traceback too
