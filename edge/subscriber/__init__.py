"""The reference PLC/MES subscriber for the alerts ``edge-run`` publishes (``edge-alerts``).

One job per module:

- :mod:`edge.subscriber.client`: :class:`AlertSubscriber`, exactly once and in order per node
  journal (live alerts, replay of what was missed, gaps, journal epochs);
- :mod:`edge.subscriber.store`: :class:`AlertStore`, the SQLite file of ``--db`` (a duplicate,
  a reused number and a failed write are told apart);
- :mod:`edge.subscriber.output`: human lines, JSON lines, thumbnails, the summary;
- :mod:`edge.subscriber.cli`: the ``edge-alerts`` command line.

Reusable from Python (``edge.alerts_cli`` re-exports the same names)::

    from edge.subscriber import AlertSubscriber, AlertStore
    with AlertSubscriber(["tcp://line1:5560"], verdicts=["NotOK", "NotDecidable"]) as sub, \\
            AlertStore("alerts.sqlite") as store:
        while (alert := sub.recv(timeout=5.0)) is not None:
            store.add(alert)
"""
from edge.subscriber.client import AlertSubscriber, parse_connect, subscription_prefixes
from edge.subscriber.store import AlertStore, StoreConflict, StoreWriteError

__all__ = ["AlertSubscriber", "AlertStore", "StoreConflict", "StoreWriteError", "parse_connect",
           "subscription_prefixes"]
