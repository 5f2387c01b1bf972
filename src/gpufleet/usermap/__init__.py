"""The user mapping: Unix user -> person and group, edited by an admin; reports ``by=person``
and ``by=group`` read it (the mapping as it is when the report runs). Unknown users are
reported as themselves. Store table ``user_mapping`` (migration 3); API in ``api``, CLI in
``cli``, validation and CSV in ``core``."""
