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

# New tenant slugs have no hyphen, so in `<app>-<tenant>` the last hyphen always separates the two
# and a hostname names exactly one tenant. (Tenants created before this rule keep their slugs and
# their URLs; app creation refuses names that would read as another tenant's, see platform_apps.)
TENANT_SLUG_PATTERN = r"^[a-z][a-z0-9]{0,29}$"
TENANT_SLUG_RE = re.compile(TENANT_SLUG_PATTERN)

tenant_slug_validator = RegexValidator(
    TENANT_SLUG_PATTERN,
    message="Use 1-30 lower-case letters and digits, starting with a letter (no hyphens: the hostname "
    "<app>-<tenant> must name one tenant only).",
    code="invalid_slug",
)
