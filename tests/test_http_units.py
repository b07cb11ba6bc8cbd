"""The HTTP service's parts without a server: keys, rate limits, settings, `serve` refusals."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.http.auth import load_keys, mint
from engine.http.ratelimit import RateLimiter, retry_after
from engine.http.settings import Settings, SettingsError
from tests.http_server import MINI


def settings(**values) -> Settings:
    return Settings.from_env({}, **values)


def test_keys_are_held_as_digests_and_matched_by_digest(tmp_path):
    secret = "a-long-enough-secret-key"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: dialer\n    sha256: {digest}\n    scopes: [turns]\n")
    inline = [{"name": "ops", "key": "another-secret-key-123", "scopes": ["reports", "turns"]}]
    ring = load_keys(settings(api_keys_file=path, api_keys=inline, rate=5, burst=7))
    assert len(ring) == 2
    dialer = ring.authenticate(secret)
    assert dialer is not None and dialer.name == "dialer" and dialer.scopes == {"turns"}
    assert (dialer.rate, dialer.burst) == (5, 7)  # defaults from the settings
    assert ring.authenticate("another-secret-key-123").scopes == {"turns", "reports"}
    assert ring.authenticate(secret + "x") is None
    assert ring.authenticate("") is None
    # Nothing the ring keeps is the key itself.
    assert all(secret.encode() not in k.digest for k in ring.keys)
    assert "another-secret-key-123" not in repr(ring.keys)


def test_minted_key_configuration_authenticates_the_key():
    key, line = mint("client", ("turns",))
    ring = load_keys(settings(api_keys=[json.loads(line)]))
    assert ring.authenticate(key).name == "client"
    assert key not in line


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "no API keys configured"),
        ([{"name": "a", "scopes": ["turns"]}], "exactly one of `sha256`"),
        ([{"name": "a", "sha256": "ab", "scopes": ["turns"]}], "keys[0].sha256"),
        ([{"name": "a", "key": "short", "scopes": ["turns"]}], "keys[0].key"),
        ([{"name": "a", "key": "long-enough-key-000", "scopes": ["admin"]}], "keys[0].scopes"),
        ([{"name": "a", "key": "long-enough-key-000", "scopes": []}], "keys[0].scopes"),
        (
            [
                {"name": "a", "key": "long-enough-key-000", "scopes": ["turns"]},
                {"name": "a", "key": "long-enough-key-001", "scopes": ["turns"]},
            ],
            "unique",
        ),
    ],
)
def test_bad_key_configuration_is_refused_with_the_place(keys, message):
    with pytest.raises(SettingsError) as caught:
        load_keys(settings(api_keys=keys))
    assert message in str(caught.value)


def test_key_file_errors_name_the_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [\n")
    with pytest.raises(SettingsError, match="keys.yaml: not valid YAML"):
        load_keys(settings(api_keys_file=path))
    with pytest.raises(SettingsError, match="cannot read API key file"):
        load_keys(settings(api_keys_file=tmp_path / "missing.yaml"))


def test_token_bucket_refills_at_its_rate():
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.acquire("k", rate=2, burst=3) for _ in range(3)] == [0, 0, 0]
    wait = limiter.acquire("k", rate=2, burst=3)
    assert wait == pytest.approx(0.5)
    assert retry_after(wait) == "1"
    now[0] += 0.5  # one token back
    assert limiter.acquire("k", rate=2, burst=3) == 0
    assert limiter.acquire("k", rate=2, burst=3) > 0
    assert limiter.acquire("other", rate=2, burst=3) == 0  # buckets are per key
    now[0] += 60  # never more than the burst saved up
    assert [limiter.acquire("k", rate=2, burst=3) for _ in range(4)][-1] > 0


def test_settings_from_the_environment_and_back():
    env = {
        "SALESBOT_HTTP_DB_URL": "sqlite:///x.db",
        "SALESBOT_HTTP_MAX_TEXT_CHARS": "500",
        "SALESBOT_HTTP_PLUGINS": "a.b, c",
        "SALESBOT_HTTP_BACKEND_OPTIONS": '{"dtype": "bfloat16"}',
        "SALESBOT_HTTP_API_KEYS": '{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '"}]}',
    }
    loaded = Settings.from_env(env)
    assert loaded.max_text_chars == 500 and loaded.plugins == ("a.b", "c")
    assert loaded.backend_options == {"dtype": "bfloat16"}
    assert loaded.api_keys[0]["name"] == "a"
    assert Settings.from_env(loaded.to_env()) == loaded


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SALESBOT_HTTP_MAX_TEXT_CHARS": "lots"}, "SALESBOT_HTTP_MAX_TEXT_CHARS"),
        ({"SALESBOT_HTTP_RATE": "-1"}, "SALESBOT_HTTP_RATE"),
        ({"SALESBOT_HTTP_API_KEYS": "[{"}, "SALESBOT_HTTP_API_KEYS: not valid JSON"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


KEYS = json.dumps([{"name": "a", "key": "long-enough-key-000", "scopes": ["turns"]}])


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, [str(MINI)], "no API keys configured"),
        ({"SALESBOT_HTTP_API_KEYS": KEYS}, [str(MINI), "--backend", "nope"], "unknown LLM backend"),
        (
            {"SALESBOT_HTTP_API_KEYS": KEYS},
            [str(MINI), "--plugin", "no_such_module_xyz"],
            "cannot import 'no_such_module_xyz'",
        ),
        ({"SALESBOT_HTTP_API_KEYS": KEYS}, ["/no/such/flow"], "flow"),
        (
            {"SALESBOT_HTTP_API_KEYS": KEYS, "SALESBOT_HTTP_THREADS": "0"},
            [str(MINI)],
            "SALESBOT_HTTP_THREADS",
        ),
    ],
)
def test_serve_refuses_bad_configuration_with_exit_2(monkeypatch, env, args, message):
    for name in ("SALESBOT_HTTP_API_KEYS", "SALESBOT_HTTP_API_KEYS_FILE", "SALESBOT_HTTP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_an_unreachable_database(monkeypatch):
    monkeypatch.setenv("SALESBOT_HTTP_API_KEYS", KEYS)
    result = CliRunner().invoke(
        main,
        ["serve", str(MINI), "--db", "postgresql+psycopg://postgres@127.0.0.1:1/none"],
    )
    assert result.exit_code == 2, result.output
    assert "cannot open the database" in result.output
