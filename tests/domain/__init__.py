"""Tests of the pure domain rules: no database, no gRPC, no event loop."""
