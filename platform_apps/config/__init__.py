"""Config vars and secrets of an app: validation, encrypted storage, and the release that applies them."""
