"""What a postback must pass before anything is forwarded, each check a small module.

Who is calling (`clientip`, over `addresses`), whether they hold a key (`secret`), what the
query says (`query`, `paramnames`, `normalize`) and whether it is a valid postback
(`validate`). Each check raises its `GatewayError` (errors.py) and keeps no state between
requests; `route.CompiledRoute.verify` runs them in order. They never forward, store or
remember anything: that is dedup's, forwarding's and durable's.
"""
