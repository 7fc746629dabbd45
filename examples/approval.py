"""Trades above a limit wait for a human approval before they are booked.

``trade`` returns the priced order directly when it is small, and
``fs.WaitForApproval(...)`` when its notional is above ``LIMIT``: the run pauses with status
``waiting`` (no thread or worker is held) until someone approves or rejects it — from
Python (``pipeline.approve(id, by=...)``) or the CLI, even from another process hours later.
Approving stores the quote as ``trade``'s value and resumes the run, so ``booking`` runs;
rejecting fails ``trade``; nobody deciding within the timeout fails it too.

Partitions are ticket ids (no partition set declared, so any key works)::

    python examples/approval.py
    flowstone approvals examples/approval.py:pipeline
    flowstone approve examples/approval.py:pipeline <id> --by you
    flowstone get examples/approval.py:pipeline booking --partition T-1002
"""

from datetime import timedelta
from typing import Any

import flowstone as fs

LIMIT = 1_000_000.0
# Stands in for the order management system; one ticket per partition key.
TICKETS: dict[str, dict[str, Any]] = {
    "T-1001": {"symbol": "ACME", "side": "buy", "quantity": 500},
    "T-1002": {"symbol": "GLBX", "side": "sell", "quantity": 40_000},
}
PRICES = {"ACME": 101.25, "GLBX": 48.10}


@fs.asset
def quote(context: fs.Context) -> dict[str, Any]:
    """The ticket priced at the current mid price."""
    ticket_id = str(context.partition)
    if ticket_id not in TICKETS:
        raise LookupError(f"unknown ticket {ticket_id!r}; known: {sorted(TICKETS)}")
    ticket = TICKETS[ticket_id]
    price = PRICES[ticket["symbol"]]
    return {"ticket": ticket_id, **ticket, "price": price,
            "notional": round(price * ticket["quantity"], 2)}


@fs.asset
def trade(quote: dict[str, Any]) -> dict[str, Any] | fs.WaitForApproval:
    """Small trades go straight through; large ones wait for a risk officer."""
    if quote["notional"] <= LIMIT:
        return quote
    return fs.WaitForApproval(
        message=(f"{quote['side']} {quote['quantity']} {quote['symbol']} for "
                 f"{quote['notional']:,.2f} exceeds the {LIMIT:,.0f} limit"),
        value=quote,
        timeout=timedelta(hours=24),
    )


@fs.asset
def booking(trade: dict[str, Any]) -> dict[str, Any]:
    """The booked trade (what a real pipeline would send to settlement)."""
    return {"ticket": trade["ticket"], "booked": True, "notional": trade["notional"]}


pipeline = fs.Pipeline("approval", [quote, trade, booking])

if __name__ == "__main__":
    for ticket_id in TICKETS:
        # force: every invocation re-prices the ticket and asks again if it is large
        result = pipeline.run("booking", partition=ticket_id, force=True)
        print(f"{ticket_id}: run {result.run_id} is {result.status}")
        if result.status == "succeeded":
            print(f"    booked: {result.value}")
        for approval in result.approvals():
            print(f"    approval {approval.id} pending: {approval.message}")
            print(f"    approve it with:  flowstone approve examples/approval.py:pipeline "
                  f"{approval.id} --by you")
            print(f"    or reject it:     flowstone reject examples/approval.py:pipeline "
                  f"{approval.id} --by you --reason 'too big'")
