"""``flower-supernode`` that asks its SuperLink for messages every 0.1 s when it has none, instead of every 3 s.

flwr 1.41's SuperNode sleeps 3 s after a pull that found no message (``flwr/supernode/start_client_internal.py``,
not configurable) and 0.5 s between looks for its ClientApp's reply; a round of fedkd has two waves of messages,
so on loopback those sleeps are most of what a deployment round costs beyond a simulation round
(docs/performance.md). This runs Flower's own command line with the sleeps of that one module capped at
$FEDKD_SUPERNODE_POLL_SECONDS (default 0.1): the same messages, asked for more often. Meant for deployments on
one machine (``make deploy-local``; ``scripts/deploy_local.py --cold`` runs Flower's own), where a poll costs
nothing; over a network keep Flower's.

    python scripts/polling_supernode.py <flower-supernode's arguments>
"""

from __future__ import annotations

import os
import time
import types

import flwr.supernode.start_client_internal as supernode_loop
from flwr.supernode.cli.flower_supernode import flower_supernode

POLL_ENV = "FEDKD_SUPERNODE_POLL_SECONDS"


def main() -> None:
    cap = float(os.environ.get(POLL_ENV, "0.1"))
    supernode_loop.time = types.SimpleNamespace(sleep=lambda seconds: time.sleep(min(seconds, cap)))
    flower_supernode()


if __name__ == "__main__":
    main()
