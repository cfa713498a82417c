"""Sending a verified postback to the app: the upstream's URL and names (`forward.Upstream`),
attempts with retries and backoff (`forward.Forwarder`), what an answer means on the sync and
the queued path and how long to wait (`policy`), and the HTTP/1.1 client under them
(`upstream_client`). It knows nothing of dedup, stores or the pipeline: it sends, and says
what came back.
"""
