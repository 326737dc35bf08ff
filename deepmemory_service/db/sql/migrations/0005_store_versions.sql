-- The version of the user's vector store that holds exactly the catalog's chunks, published
-- in the transaction that adds them (store.py). NULL: a store written before versions,
-- taken over (or rebuilt from the catalog) on its first use.
ALTER TABLE corpora ADD COLUMN store_version text;
