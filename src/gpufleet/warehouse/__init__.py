"""The usage warehouse's pure core, shared by the store (which rolls samples up into tiers)
and the reports (which read them): what each fact means (``facts``) and how days, weeks,
months and years fall in the lab's time zone (``calendar``). No I/O."""
