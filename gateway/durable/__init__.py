"""Everything that needs the durable store: the store itself (`store`), the outbox of queued
routes (`outbox`), delivering it in the background (`deliverer`), dedup keys that survive a
restart (`keys`, a dedup backend), the service that starts and stops them as one (`service`)
and the operator's `queue` command (`queue_cli`). It is handed the loaded routes by the
runtime and never reaches back into the gateway or the request path.
"""
