"""The registry's service layer: what each REST call does, over the store and the lifecycle tables, with no HTTP.
One module per resource (experiments, splits, models); the REST handlers (registry/api) only translate."""
