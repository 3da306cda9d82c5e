"""Browser tests: a package, so its conftest loads as `browser.conftest` and does not shadow tests/e2e/conftest.py."""
