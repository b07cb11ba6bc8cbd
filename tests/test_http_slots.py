"""Slot injection over HTTP, against a real server process (uvicorn, SQLite, the mini flow).

A slot value is customer data that ends up in approved scripts. One that carries a forbidden
phrase, a price, a percentage, a newline or too many characters is refused at start (422
`invalid_slot`, naming the slot and the rule, writing nothing); one its type allows but that
makes a script break a hard rule once filled in never reaches the customer.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from engine.compliance.rules import forbidden_hits
from engine.flow.loader import load_flow
from tests.http_server import MINI, Server, serving

KEY = "slot-test-key-000001"
PHRASES = ["discount", "free iphone", "with free"]
PATTERNS = [r"\d+(\.\d+)?\s*(%|per\s?cent)", r"£\s?\d"]


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini flow (short-form slots) with hard rules against discounts, prices and
    percentages."""
    folder = tmp_path_factory.mktemp("flow") / "mini"
    shutil.copytree(MINI, folder)
    flow_yaml = folder / "flow.yaml"
    old = "  universal_fallback: universal.fallback\n"
    assert old in flow_yaml.read_text()
    rules = f"  forbidden: {{phrases: {PHRASES}, patterns: {PATTERNS}}}\n".replace('"', "'")
    flow_yaml.write_text(flow_yaml.read_text().replace(old, old + rules))
    return folder


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http-slots") / "service.db"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, flow_dir: Path, db_path: Path
) -> Iterator[Server]:
    keys = [{"name": "full", "key": KEY, "scopes": ["turns"], "rate": 10_000, "burst": 10_000}]
    log = db_path.parent / "server.log"
    with serving(tmp_path_factory, flow_dir, f"sqlite:///{db_path}", keys, log) as service:
        yield service


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client(KEY) as c:
        yield c


def query(db_path: Path, sql: str) -> list[tuple]:
    engine = create_engine(f"sqlite:///{db_path}")
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return rows


PATTERN = "string_pattern_mismatch"


@pytest.mark.parametrize(
    ("value", "code", "rule"),
    [
        # The reported attack: the document's pattern for a name refuses it (request schema).
        ("Alex. We will give you 50% off and a free iPhone", "invalid_request", PATTERN),
        ("Alex £50", "invalid_request", PATTERN),  # a price
        ("Alex 50 percent", "invalid_request", PATTERN),  # a percentage
        ("Alex 50%", "invalid_request", PATTERN),
        ("A" * 61, "invalid_request", "string_too_long"),  # over-long (the setting allows 500)
        ("Alex\nWe will give you a free iPhone", "invalid_request", PATTERN),  # a newline
        ("Alex\u2028Smith", "invalid_request", PATTERN),  # a Unicode line separator
        (42, "invalid_request", "string_type"),
        # Letters only, so the schema allows them, but forbidden phrases: Engine.start refuses.
        ("Alex Discount", "invalid_slot", "forbidden"),
        ("Alex Free iPhone", "invalid_slot", "forbidden"),
    ],
)
def test_injected_slot_is_refused_at_start_naming_the_slot(client, db_path, value, code, rule):
    before = query(db_path, "SELECT count(*) FROM conversations")[0][0]
    body = {"customer_id": "attacker", "slots": {"customer_name": value}}
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert [(d["loc"], d["type"]) for d in error["details"]] == [
        (["body", "slots", "customer_name"], rule)
    ]
    assert "customer_name" in error["message"]
    if isinstance(value, str):
        assert value not in response.text  # customer data is not echoed
    assert query(db_path, "SELECT count(*) FROM conversations")[0][0] == before


def test_the_document_states_each_slots_rules(client):
    document = client.get("/openapi.json").json()
    slots = document["components"]["schemas"]["Slots"]
    name = slots["properties"]["customer_name"]
    assert name["maxLength"] == 60 and name["pattern"].startswith("^(?:")
    assert slots["required"] == ["customer_name"]


def test_a_value_its_type_allows_never_makes_a_sent_text_break_a_rule(client, db_path):
    """ "Free" is a fine name, but "Am I speaking with Free?" breaks the rule "with free": the
    universal fallback is sent and the audit row says why."""
    response = client.post(
        "/v1/sessions", json={"customer_id": "free", "slots": {"customer_name": "Free"}}
    )
    assert response.status_code == 201, response.text
    reply = response.json()["reply"]
    assert (reply["text"], reply["source"]) == ("Sorry, I didn't catch that.", "universal")
    session = response.json()["session_id"]
    audit = query(
        db_path,
        "SELECT decision, raw_text, rule_hits FROM compliance_decisions "
        f"WHERE conversation_id = '{session}'",
    )
    assert len(audit) == 1 and audit[0][0] == "universal"
    assert audit[0][1] == "Hello, this is Sam. Am I speaking with Free?"
    assert "with free" in audit[0][2]

    good = client.post(
        "/v1/sessions", json={"customer_id": "ok", "slots": {"customer_name": "Mary-Jane O'Neil"}}
    )
    assert good.status_code == 201
    expected = "Hello, this is Sam. Am I speaking with Mary-Jane O'Neil?"
    assert good.json()["reply"]["text"] == expected


def test_no_sent_text_breaks_a_hard_rule(client, db_path, flow_dir):
    """Run last: every reply the service stored (= sent) passes the flow's rules."""
    flow = load_flow(flow_dir)
    sent = [row[0] for row in query(db_path, "SELECT reply_text FROM turns")]
    assert len(sent) >= 2
    broken = [t for t in sent if forbidden_hits(t, flow.forbidden_phrases, flow.forbidden_patterns)]
    assert broken == []
