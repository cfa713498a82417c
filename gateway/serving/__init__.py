"""The process on its sockets: the public port's low-level server and our answer to requests
that are not HTTP (`http_server`), the one place a request's fate becomes its answer, log line
and metrics (`outcome`), the admin app (`app`), and listening, reloading, draining and stopping
(`server`). It drives the runtime; nothing below it imports it.
"""
