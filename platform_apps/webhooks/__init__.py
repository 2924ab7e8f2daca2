"""CI webhooks: signature verification, delivery deduplication, the secret's rotation."""
