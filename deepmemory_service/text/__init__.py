"""A user's text as the service reads it: chunks, and the queries a chunk's own words make."""
