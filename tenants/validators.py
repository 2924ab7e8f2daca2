from __future__ import annotations

import re

from django.core.validators import RegexValidator

# One DNS label, lower-case ASCII only: tenant slugs and app names both end up in hostnames
# (`<app>-<tenant>.<apps domain>`), so unicode look-alikes and upper case are refused, not folded.
DNS_LABEL_PATTERN = r"^[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?$"
DNS_LABEL_RE = re.compile(DNS_LABEL_PATTERN)
DNS_LABEL_MAX = 30

dns_label_validator = RegexValidator(
    DNS_LABEL_PATTERN,
    message="Use 1-30 lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen.",
    code="invalid_name",
)
