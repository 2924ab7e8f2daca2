"""The shared core every layer may use: API errors, failure classes, crypto, log context."""
