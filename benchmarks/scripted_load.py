"""What the load benchmarks (engine_turn_cpu.py, http_load.py) send and where they keep data.

The customer lines are ones the scripted flow (tests/flows/scripted) understands, so the
figures measure the engine, the service and the database rather than a language model.
"""

from __future__ import annotations

TEXTS = [
    "how much is it",
    "how fast is it",
    "how long is the contract",
    "are you a robot",
    "what does it cost",
    "what speed do I get",
    "am I tied in",
    "is this a bot",
]
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
