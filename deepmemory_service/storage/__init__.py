"""A user's corpus: documents and chunks in the catalog, their vectors in a versioned
deeplake store kept in line with it, embedders, and the nearest-chunk search."""
