"""Stand-ins and fakes for tests, benchmarks, and trying the service offline."""
