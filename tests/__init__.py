"""The test suite (a regular package: a dependency installs a top-level ``tests`` package of its own)."""
