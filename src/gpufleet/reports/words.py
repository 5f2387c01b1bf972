"""How a report names its grouping and its period in words (marked for translation): one list
for the CLI's table and the e-mailed report."""

from __future__ import annotations

from gpufleet.i18n import N_

BY_WORDS = {
    "fleet": N_("fleet"), "host": N_("host"), "gpu_model": N_("GPU model"), "gpu": N_("GPU"),
    "user": N_("user"), "group": N_("group"), "person": N_("person"),
    "host_group": N_("host group"),
}  # fmt: skip
PERIOD_NAMES = {
    "day": N_("day"), "week": N_("week"), "month": N_("month"), "quarter": N_("quarter"),
    "year": N_("year"), "custom": N_("custom range"),
}  # fmt: skip
