"""Everything that needs the durable store: the store itself (`store`), the outbox of queued
routes (`outbox`), delivering it in the background (`deliverer`), dedup keys that survive a
restart (`keys`, a dedup backend) and the service that starts and stops them as one
(`service`). It is handed the loaded routes by the runtime and never reaches back into the
gateway or the request path; the operator's `queue` command (`gateway/queue_cli.py`) sits
beside the other commands and speaks the outbox protocol.
"""
