"""An app's runtime logs (`GET /apps/{id}/logs`, JSON or a follow stream) and the follow mode of a deployment's
build log. The lines themselves are collected into `drivers.logstore` by the collector and the pipeline."""
