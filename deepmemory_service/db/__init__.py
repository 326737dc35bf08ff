"""PostgreSQL: the one module that speaks to it (`database`), its SQL (`sql/`), migrations,
and the embedded server used when no database is configured."""
