"""An approval and a signal gate: the run waits without holding a worker.

``gated`` writes its gate token to ``$FLOWSTONE_IT_DIR/<run_id>.token`` so a test can
signal it (in production the token would be sent to the external system).
"""

import os
from pathlib import Path
from typing import Any

import flowstone as fs


@fs.asset
def quote() -> dict[str, Any]:
    return {"symbol": "ACME", "notional": 2_000_000}


@fs.asset
def trade(quote: dict[str, Any]) -> Any:
    return fs.WaitForApproval(f"approve {quote['symbol']}?", value={**quote, "approved": True},
                              timeout=600)


@fs.asset
def booking(trade: dict[str, Any]) -> str:
    return f"booked {trade['symbol']} approved={trade['approved']}"


def on_signal(context: fs.Context, payload: Any) -> dict[str, Any]:
    return {"callback": payload}


@fs.asset(on_signal=on_signal)
def gated(context: fs.Context) -> Any:
    gate = context.signal_gate(timeout=600)
    Path(os.environ["FLOWSTONE_IT_DIR"], f"{context.run_id}.token").write_text(gate.token)
    return gate


@fs.asset
def after_gate(gated: dict[str, Any]) -> str:
    return f"got {gated['callback']['status']}"


pipeline = fs.Pipeline("it_waits", [quote, trade, booking, gated, after_gate])
