"""Deployments: intake of sources (archive, git, image), rollbacks and releases; reads."""
