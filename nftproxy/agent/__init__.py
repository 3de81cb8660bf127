"""The imperative shell: object stores, dirty tracking, the sync loop, sources of objects."""
