"""Test helpers: fakes, fixtures and the contract suites that plugins subclass."""
