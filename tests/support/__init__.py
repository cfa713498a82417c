"""What the tests share: real servers to run (gateways, upstreams, PostgreSQL, Chromium),
configs to build, clocks and waits."""
