"""Sending a verified postback to the app: the upstream's URL and names (`forward.Upstream`),
attempts with retries and backoff (`forward.Forwarder`) and the HTTP/1.1 client under them
(`upstream_client`). It knows nothing of dedup, stores or the pipeline: it sends, and says
what came back.
"""
